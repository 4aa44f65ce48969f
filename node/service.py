"""The running node: receiver, study scheduler, processing worker and delivery loop.

Threads (the receiver's association threads come from pynetdicom):
  scheduler  closes studies after the quiet period and queues their jobs
  worker(s)  processing.workers threads, each feeding one child process (node.workers) that
             runs one job at a time under a time and memory limit; claiming a job is a
             transaction, so no two workers take the same one
  delivery   sends produced objects, honouring each delivery's next_attempt_at
  retention  hourly, deletes the files of finished work past storage.retention_days
Everything that matters is in the queue database, so stopping at any point (SIGTERM or kill -9)
loses nothing: on start, interrupted jobs are queued again and spool files the database does not
know (a crash between the file and the commit) are adopted.

Scale-out (node/roles.py): `--role receiver` runs only the receiver and the scheduler, `--role
worker` only workers, delivery and retention; several of each share a PostgreSQL queue, whose
claims and leases (node/jobstore.py) replace the single-process assumptions.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from cephnode.config.schema import NodeConfig
from cephnode.dicom_io.spool import remove_partials
from cephnode.domain.states import JobState
from cephnode.node.delivery import Deliverer
from cephnode.node.jobstore import InstanceRecord, JobStore, open_store
from cephnode.node.logs import get_logger, sanitize_error
from cephnode.node.workers import WorkerPool
from cephnode.node.retention import prune
from cephnode.node.receiver import Receiver
from cephnode.node.roles import Role, check_role
from cephnode.node.selection import evaluate

log = get_logger("cephnode.service")

POLL_S = 0.2
PRUNE_EVERY_S = 3600.0
# On a shared spool/outbox, files younger than this may be another live process's write in flight.
SHARED_FOLDER_GRACE_S = 600.0


def load_pipeline(cfg: NodeConfig) -> Any:
    """Called in each worker process, never in the node's own (see node.workers)."""
    from cephnode.inference.pipeline import Pipeline  # heavy (ONNX Runtime)

    p = cfg.processing
    pipe = Pipeline.load(p.models_dir, device=p.device, threads=p.threads)
    if p.test_time_shifts == "none":
        pipe.test_time_shifts = ()
    if p.refine == "none":
        pipe.set_refine_weight(0)
    return pipe


class NodeService:
    def __init__(self, cfg: NodeConfig, *, role: Role | str = Role.ALL):
        self.cfg = cfg
        self.role = Role(role)
        self.pool: WorkerPool | None = None
        self.pack_info: dict[str, Any] = {}   # what the worker processes loaded (pack, providers)
        self._stop = threading.Event()
        self._wake_scheduler = threading.Event()
        self._wake_worker = threading.Event()
        self._wake_delivery = threading.Event()
        self._threads: list[threading.Thread] = []
        self.store: JobStore | None = None
        self.receiver: Receiver | None = None
        self.metrics = None   # node.metrics.NodeMetrics once started
        self.http = None      # node.adminhttp.AdminHttp when [http] is enabled

    # ---- start ------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        # Patient data: files 0600 and folders 0700, whatever the caller's umask (the SQLite
        # file and its WAL included); folders made by an older version are tightened too.
        os.umask(0o077)
        for folder in (cfg.storage.spool, cfg.storage.outbox, Path(cfg.storage.db).parent):
            Path(folder).mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        # ---- store and role (scale-out) ----
        check_role(self.role, shared_store=cfg.storage.shared)
        self.store = open_store(cfg.storage, max_processing_attempts=cfg.processing.max_processing_attempts)
        grace = SHARED_FOLDER_GRACE_S if not self.store.exclusive else 0.0
        if self.store.exclusive:   # the SQLite file and its WAL hold patient data
            for f in Path(cfg.storage.db).parent.glob(Path(cfg.storage.db).name + "*"):
                os.chmod(f, 0o600)
        # ----
        recovered = self.store.recover(cfg.processing.max_processing_attempts)
        partials = (remove_partials(Path(cfg.storage.spool), older_than_s=grace)
                    + remove_partials(Path(cfg.storage.outbox), older_than_s=grace))
        adopted = self._adopt_orphans(min_age_s=grace) if self.role.receives else 0
        summary = self.store.summary(recent=0)
        log.info("recovered", requeued_jobs=recovered["requeued"], parked_jobs=recovered["parked"],
                 adopted_spool_files=adopted, removed_partial_files=partials, queue_depth=summary["queue_depth"],
                 pending_deliveries=summary["deliveries"].get("pending", 0), role=self.role.value,
                 store=self.store.describe(), owner=self.store.owner)
        self._start_observability()
        if self.role.processes:
            self._start_processing()
        if self.role.receives:
            self._start_receiving()
        log.info("node_started", role=self.role.value, ae_title=cfg.listen.ae_title,
                 port=self.receiver.port if self.receiver else None, quiet_period_s=cfg.study.quiet_period_s,
                 destinations=[d.name for d in cfg.destinations])

    def _start_loops(self, loops) -> None:
        for name, target in loops:
            t = threading.Thread(target=self._guard(name, target), name=f"cephnode-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _start_receiving(self) -> None:
        self._start_loops([("scheduler", self._scheduler_loop)])
        self.receiver = Receiver(self.cfg, self.store, on_received=self._wake_scheduler.set, metrics=self.metrics,
                                 watermark=self.watermark)
        self.receiver.start()

    def _start_processing(self) -> None:
        cfg = self.cfg
        t = time.perf_counter()
        self.pool = WorkerPool(cfg, self.store, stop=self._stop, wake=self._wake_worker,
                               on_state=self._job_settled, on_planned=self._wake_delivery.set)
        self.pack_info = self.pool.start()  # the children load the pack; a broken pack stops the start here
        info = self.pack_info
        log.info("pipeline_loaded", pack=info.get("pack"), version=info.get("version"), providers=info.get("providers"),
                 workers=cfg.processing.workers, worker_pids=self.pool.pids(),
                 memory_limit_bytes=info.get("memory_limit_bytes"), job_timeout_s=cfg.processing.job_timeout_s,
                 refine=info.get("refine"), warm_up_ms=info.get("warm_up_ms"),
                 load_ms=round((time.perf_counter() - t) * 1000, 1))
        self.deliverer = Deliverer(cfg, self.store, metrics=self.metrics)
        loops = [("delivery", self._delivery_loop)]
        if cfg.storage.retention_days > 0:
            loops.append(("retention", self._retention_loop))
        self._start_loops(loops)

    def _start_observability(self) -> None:
        """Metrics, the disk watermark and the admin HTTP endpoint; up before the model pack
        loads, so /healthz answers and /readyz says what is still missing."""
        from cephnode.node.metrics import DiskWatermark, NodeMetrics

        st = self.cfg.storage
        self.watermark = DiskWatermark(st.spool, st.min_free_mb)
        self.metrics = NodeMetrics(self.store, spool_dir=st.spool, outbox_dir=st.outbox, watermark=self.watermark,
                                   info=self.info, ready=self.readiness)
        if self.cfg.http.enabled:
            from cephnode.node.adminhttp import AdminHttp

            self.http = AdminHttp(self).start()

    def info(self) -> dict[str, str]:
        """The pack and providers the worker processes loaded (empty until they have)."""
        p = self.pack_info
        if not p:
            return {}
        return {"pack_name": str(p.get("pack")), "pack_version": str(p.get("version")),
                "device": self.cfg.processing.device, "provider": ",".join(p.get("providers") or [])}

    def readiness(self) -> dict:
        checks = {
            # a worker-only process has no listener, a receiver-only one no model pack
            "listening": not self.role.receives or (self.receiver is not None and self.receiver.listening),
            "queue_db_writable": self.store is not None and self.store.writable(),
            "model_pack_loaded": not self.role.processes or bool(self.pack_info),
            "disk_above_watermark": not self.watermark.low(),
        }
        return {"ready": all(checks.values()), "checks": checks}

    def _adopt_orphans(self, *, min_age_s: float = 0.0) -> int:
        """Spool files written just before a crash, whose database row never committed. The
        sender had no Success for them; recording them now means a resend is a duplicate.
        min_age_s: on a shared spool, a younger file may be another receiver's commit in flight."""
        known = self.store.known_paths()
        adopted = 0
        spool = Path(self.cfg.storage.spool).resolve()
        cutoff = time.time() - min_age_s
        for path in sorted(spool.rglob("*.dcm")):
            if str(path) in known or ".incoming" in path.relative_to(spool).parts:
                continue   # .incoming: transfers that were never acknowledged
            try:
                if min_age_s and path.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            try:
                ds = pydicom.dcmread(BytesIO(path.read_bytes()), stop_before_pixels=True)
                sop_uid = str(ds.SOPInstanceUID)
                sop_class = str(ds.SOPClassUID)
                verdict = evaluate(ds, sop_class, self.cfg.selection)
                rec = InstanceRecord(sop_uid, sop_class, str(ds.get("StudyInstanceUID", "")) or None,
                                     str(ds.get("SeriesInstanceUID", "")) or None,
                                     str(ds.file_meta.get("TransferSyntaxUID", "")), str(path), None, None,
                                     verdict.selected, verdict.reason)
            except Exception as exc:
                log.warning("orphan_unreadable", path=str(path), error=sanitize_error(str(exc)))
                continue
            if self.store.record_instance(rec):
                adopted += 1
        return adopted

    # ---- loops ------------------------------------------------------------------------
    def _guard(self, name: str, loop):
        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop()
                    return
                except Exception:  # keep the node alive: log and restart the loop
                    log.exception("loop_crashed", loop=name)
                    self._stop.wait(1.0)
        return run

    def _scheduler_loop(self) -> None:
        quiet = self.cfg.study.quiet_period_s
        while not self._stop.is_set():
            for study, queued in self.store.close_quiet_studies(quiet):
                log.info("study_complete", study_uid=study, jobs_queued=queued, quiet_period_s=quiet)
                self._wake_worker.set()
            # until the oldest open study falls quiet (not a poll step later: that step was up to
            # a quarter of the quiet period of latency on every study), or a new instance comes
            due = self.store.next_quiet_time(quiet)
            wait = POLL_S if due is None else min(POLL_S, max(due - time.time(), 0.01))
            self._wake_scheduler.wait(wait)
            self._wake_scheduler.clear()

    def _job_settled(self, job, state: JobState) -> None:
        """A worker's job reached a state (in this process: the children never see metrics)."""
        self.metrics.job_returned(job.id, state)
        if state is JobState.DELIVERING:
            self._wake_delivery.set()

    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            self.deliverer.run_once(stop=self._stop)
            nxt = self.store.next_delivery_time()
            wait = POLL_S if nxt is None else min(max(nxt - time.time(), 0.05), 5.0)
            self._wake_delivery.wait(wait)
            self._wake_delivery.clear()

    def _retention_loop(self) -> None:
        st = self.cfg.storage
        while not self._stop.is_set():
            r = prune(self.store, retention_days=st.retention_days, spool_dir=st.spool, outbox_dir=st.outbox)
            if r.instances or r.refused:
                log.info("retention_pruned", instances=r.instances, files=r.files, bytes=r.bytes,
                         refused_paths=r.refused, retention_days=st.retention_days)
            self._stop.wait(PRUNE_EVERY_S)

    # ---- stop -------------------------------------------------------------------------
    def stop(self, timeout: float = 120.0) -> None:
        """Graceful: stop accepting associations (those in flight finish their spool writes),
        let the worker finish its job and the delivery loop its object, then close. Anything
        not finished stays in SQLite and resumes at the next start."""
        if self._stop.is_set():
            return
        log.info("node_stopping")
        if self.receiver is not None:
            self.receiver.stop()
        self._stop.set()
        for ev in (self._wake_scheduler, self._wake_worker, self._wake_delivery):
            ev.set()
        deadline = time.monotonic() + timeout
        unfinished = self.pool.stop(timeout) if self.pool is not None else []
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        if self.http is not None:
            self.http.stop()
        unfinished += [t.name for t in self._threads if t.is_alive()]
        log.info("node_stopped", unfinished_threads=unfinished)

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()

        def on_signal(signum, frame) -> None:
            log.info("signal", signal=signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not done.wait(1.0):
            pass
        self.stop()
