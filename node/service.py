"""The running node: receiver, study scheduler, processing worker and delivery loop.

Threads (the receiver's association threads come from pynetdicom):
  scheduler  closes studies after the quiet period and queues their jobs
  worker(s)  processing.workers threads, each feeding one child process (node.workers) that
             runs one job at a time under a time and memory limit; claiming a job is a
             transaction, so no two workers take the same one
  delivery   sends produced objects, honouring each delivery's next_attempt_at
  retention  hourly, deletes the files of finished work past storage.retention_days
Everything that matters is in SQLite, so stopping at any point (SIGTERM or kill -9) loses
nothing: on start, interrupted jobs are queued again and spool files the database does not
know (a crash between the file and the commit) are adopted.
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
from cephnode.node.delivery import Deliverer
from cephnode.node.jobstore import InstanceRecord, JobStore
from cephnode.node.logs import get_logger, sanitize_error
from cephnode.node.workers import WorkerPool
from cephnode.node.retention import prune
from cephnode.node.receiver import Receiver
from cephnode.node.selection import evaluate

log = get_logger("cephnode.service")

POLL_S = 0.2
PRUNE_EVERY_S = 3600.0


def load_pipeline(cfg: NodeConfig) -> Any:
    """Called in each worker process, never in the node's own (see node.workers)."""
    from cephnode.inference.pipeline import Pipeline  # heavy (ONNX Runtime)

    p = cfg.processing
    return Pipeline.load(p.models_dir, device=p.device, threads=p.threads)


class NodeService:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.pool: WorkerPool | None = None
        self._stop = threading.Event()
        self._wake_scheduler = threading.Event()
        self._wake_worker = threading.Event()
        self._wake_delivery = threading.Event()
        self._threads: list[threading.Thread] = []
        self.store: JobStore | None = None
        self.receiver: Receiver | None = None

    # ---- start ------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        # Patient data: files 0600 and folders 0700, whatever the caller's umask (the SQLite
        # file and its WAL included); folders made by an older version are tightened too.
        os.umask(0o077)
        for folder in (cfg.storage.spool, cfg.storage.outbox, Path(cfg.storage.db).parent):
            Path(folder).mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self.store = JobStore(cfg.storage.db)
        for f in Path(cfg.storage.db).parent.glob(Path(cfg.storage.db).name + "*"):
            os.chmod(f, 0o600)
        recovered = self.store.recover(cfg.processing.max_processing_attempts)
        partials = remove_partials(Path(cfg.storage.spool)) + remove_partials(Path(cfg.storage.outbox))
        adopted = self._adopt_orphans()
        summary = self.store.summary(recent=0)
        log.info("recovered", requeued_jobs=recovered["requeued"], parked_jobs=recovered["parked"],
                 adopted_spool_files=adopted, removed_partial_files=partials, queue_depth=summary["queue_depth"],
                 pending_deliveries=summary["deliveries"].get("pending", 0))
        t = time.perf_counter()
        self.pool = WorkerPool(cfg, self.store, stop=self._stop, wake=self._wake_worker,
                               on_state=self._job_settled)
        info = self.pool.start()  # the children load the pack; a broken pack stops the start here
        log.info("pipeline_loaded", pack=info.get("pack"), version=info.get("version"), providers=info.get("providers"),
                 workers=cfg.processing.workers, worker_pids=self.pool.pids(),
                 memory_limit_bytes=info.get("memory_limit_bytes"), job_timeout_s=cfg.processing.job_timeout_s,
                 load_ms=round((time.perf_counter() - t) * 1000, 1))
        self.deliverer = Deliverer(cfg, self.store)
        loops = [("scheduler", self._scheduler_loop), ("delivery", self._delivery_loop)]
        if cfg.storage.retention_days > 0:
            loops.append(("retention", self._retention_loop))
        for name, target in loops:
            t = threading.Thread(target=self._guard(name, target), name=f"cephnode-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.receiver = Receiver(cfg, self.store, on_received=self._wake_scheduler.set)
        self.receiver.start()
        log.info("node_started", ae_title=cfg.listen.ae_title, port=self.receiver.port,
                 quiet_period_s=cfg.study.quiet_period_s, destinations=[d.name for d in cfg.destinations])

    def _adopt_orphans(self) -> int:
        """Spool files written just before a crash, whose database row never committed. The
        sender had no Success for them; recording them now means a resend is a duplicate."""
        known = self.store.known_paths()
        adopted = 0
        spool = Path(self.cfg.storage.spool).resolve()
        for path in sorted(spool.rglob("*.dcm")):
            if str(path) in known or ".incoming" in path.relative_to(spool).parts:
                continue   # .incoming: transfers that were never acknowledged
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
            self._wake_scheduler.wait(min(POLL_S, max(quiet / 4, 0.05)))
            self._wake_scheduler.clear()

    def _job_settled(self, state: str) -> None:
        if state == "delivering":
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
