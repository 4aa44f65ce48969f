"""Worker processes: the unsafe part of every job runs in a child process.

Decoders (C and Rust) and ONNX Runtime can do things no `try` survives: a segfault, a hang in
native code, a panic, an allocation that takes the whole machine. So each of the
`processing.workers` slots owns one child process (spawned, never forked from the threaded
node), which loads the model pack once and then runs jobs one at a time. The parent keeps
the database: it claims a job, sends the child the job's ids and spool path, and receives a
small JobOutcome (UIDs and outbox paths), which it records. The child:

  * runs under an address-space limit (RLIMIT_AS: what the pack needed at load time plus
    processing.worker_memory_mb), so a blow-up ends in a MemoryError or in the child's
    death, not in the host swapping; it writes no core files;
  * dies with the parent (PR_SET_PDEATHSIG), so a kill -9 of the node leaves no orphan;
  * is killed when a job exceeds processing.job_timeout_s.

A child that dies or is killed is replaced. A timeout or a death is counted against the job's
processing attempts: the job is queued again until it has had max_processing_attempts, then
it fails with the reason ("timed out after N s", "worker process died: SIGSEGV").
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any, Callable

from cephnode.config.schema import NodeConfig
from cephnode.domain.states import JobState
from cephnode.node.jobstore import Job, JobStore
from cephnode.node.logs import get_logger, sanitize_error
from cephnode.node.processing import JobOutcome, record_early, record_outcome

log = get_logger("cephnode.workers")

_CTX = mp.get_context("spawn")
PR_SET_PDEATHSIG = 1


class WorkerStartError(ValueError):
    """The child could not load the model pack (the node must not start on it)."""


# ---- child side ---------------------------------------------------------------------------
def _vm_size_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(cfg: NodeConfig, conn: Connection, name: str) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing decoder leaves no core file of patient pixels
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is the parent's to handle
    from cephnode.node import logs

    logs.configure(cfg.logging.level, cfg.logging.format, cfg.logging.log_phi, stream=_capture_native_stderr())
    clog = logs.get_logger("cephnode.worker").bind(worker=name, pid=os.getpid())
    try:
        from cephnode.node.processing import Processor
        from cephnode.node.service import load_pipeline  # the node's modules, imported once per child

        t = time.perf_counter()
        pipeline = load_pipeline(cfg)
        processor = Processor(cfg, pipeline)
        warm_ms = pipeline.warm_up()      # before the memory limit: it counts the loaded sessions
        limit = _apply_memory_limit(cfg, pipeline)
        conn.send(("ready", {"pack": pipeline.pack.name, "version": pipeline.pack.version,
                             "providers": sorted(_providers(pipeline)), "memory_limit_bytes": limit,
                             "batches_stage1": bool(pipeline.batches_stage1()),
                             "load_ms": round((time.perf_counter() - t) * 1000, 1),
                             "refine": pipeline.refinement is not None,
                             "warm_up_ms": round(warm_ms, 1)}))
    except BaseException as exc:  # a broken pack: the parent refuses to start
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    clog.debug("worker_ready")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        # a list of jobs (a batch) or one job; each SR goes to the parent as soon as it is
        # written, and the parent queues its deliveries
        def early(job_id: int, objects: list[dict[str, str]]) -> None:
            conn.send(("early", (job_id, objects)))

        outcomes = processor.execute_batch([Job(**m) for m in (msg if isinstance(msg, list) else [msg])], early)
        conn.send(("done", outcomes))


def _providers(pipeline: Any) -> set[str]:
    """ONNX Runtime providers in use, over every model of the pack."""
    return {p for names in dict(pipeline.providers).values() for p in names}


def _capture_native_stderr():
    """Native code writes to file descriptor 2 directly (a Rust panic prints "thread panicked
    at ..."; C libraries print warnings). In a worker, fd 2 becomes a pipe whose lines are
    logged as `native_stderr` events (sanitised, capped), so the log stays one JSON object
    per line; the worker's own log events go to a duplicate of the real stderr."""
    from cephnode.node.logs import get_logger, sanitize_error

    real = os.fdopen(os.dup(2), "w", buffering=1, errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    nlog = get_logger("cephnode.worker")

    def pump() -> None:
        with os.fdopen(read_fd, "r", errors="replace") as lines:
            for line in lines:
                if line.strip():
                    nlog.warning("native_stderr", pid=os.getpid(), message=sanitize_error(line.rstrip("\n"), 500))

    threading.Thread(target=pump, name="cephnode-stderr", daemon=True).start()
    return real


def _apply_memory_limit(cfg: NodeConfig, pipeline: Any) -> int | None:
    """Cap the address space at what the loaded pack takes plus the per-job budget. Not under
    CUDA: its driver reserves far more address space than it ever touches."""
    budget = cfg.processing.worker_memory_mb
    if not budget or any("CUDA" in p or "Tensorrt" in p for p in _providers(pipeline)):
        return None
    limit = _vm_size_bytes() + budget * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


# ---- parent side --------------------------------------------------------------------------
def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"worker process died: {name} (killed; the usual cause is running out of memory)"
        return f"worker process died: {name}"
    return f"worker process exited with code {code}"


class WorkerSlot:
    """One parent thread and its child process."""

    def __init__(self, cfg: NodeConfig, name: str):
        self.cfg = cfg
        self.name = name
        self.proc: Any = None
        self.conn: Connection | None = None
        self.info: dict[str, Any] = {}
        self.replacements = 0

    def start(self, timeout: float = 600.0) -> dict[str, Any]:
        parent, child = _CTX.Pipe()
        proc = _CTX.Process(target=_child_main, args=(self.cfg, child, self.name),
                            name=f"cephnode-{self.name}", daemon=True)
        proc.start()
        child.close()
        self.proc, self.conn = proc, parent
        if not parent.poll(timeout):
            self.kill()
            raise WorkerStartError(f"{self.name}: the worker process did not load the pack within {timeout:.0f} s")
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            self.kill()
            raise WorkerStartError(f"{self.name}: {_describe_exit(proc.exitcode)} while loading the pack") from None
        if kind != "ready":
            self.kill()
            raise WorkerStartError(f"cannot load the model pack: {payload}")
        self.info = payload
        return payload

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> int | None:
        """SIGKILL the child and reap it; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        code = self.proc.exitcode
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn = None, None
        return code

    def stop(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(5)
        self.kill()

    def run(self, jobs: list[Job], timeout_s: float,
            on_early: Callable[[int, list[dict[str, str]]], None] | None = None
            ) -> tuple[list[JobOutcome] | None, str | None]:
        """Send jobs (one, or a batch); returns (one outcome per job, None), or (None, why the
        process was lost). Objects the child hands on before it is done (each job's SR) go to
        on_early(job_id, objects) as they come."""
        assert self.conn is not None
        self.conn.send([asdict(job) for job in jobs])
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return None, f"timed out after {timeout_s:g} s"
            try:
                if self.conn.poll(min(left, 1.0)):
                    kind, payload = self.conn.recv()
                    if kind == "early":
                        if on_early is not None:
                            on_early(*payload)
                        continue
                    return payload, None
            except (EOFError, OSError):
                pass
            else:
                if self.proc.is_alive():
                    continue
            self.proc.join(5)
            code = self.proc.exitcode
            self.kill()
            return None, _describe_exit(code)


class WorkerPool:
    """processing.workers slots, each a thread in the node that feeds its own child process."""

    def __init__(self, cfg: NodeConfig, store: JobStore, *, stop: threading.Event, wake: threading.Event,
                 on_state: Callable[[Job, JobState], None] | None = None,
                 on_planned: Callable[[], None] | None = None):
        self.cfg = cfg
        self.store = store
        self._stop = stop
        self._wake = wake
        self._on_state = on_state
        self._on_planned = on_planned        # deliveries were queued early: wake the delivery loop
        self.slots = [WorkerSlot(cfg, f"worker-{i + 1}") for i in range(cfg.processing.workers)]
        self.threads: list[threading.Thread] = []
        self._paused: str | None = None      # the transient condition jobs are waiting on
        self._deferrals = 0
        self._claim_error: str | None = None

    def start(self) -> dict[str, Any]:
        """Start every child and wait until each has loaded the pack (raises WorkerStartError)."""
        info: dict[str, Any] = {}
        try:
            for slot in self.slots:
                info = slot.start()
        except BaseException:
            for slot in self.slots:
                slot.kill()
            raise
        for slot in self.slots:
            t = threading.Thread(target=self._loop, args=(slot,), name=f"cephnode-{slot.name}", daemon=True)
            t.start()
            self.threads.append(t)
        return info

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid is not None]

    def _loop(self, slot: WorkerSlot) -> None:
        while not self._stop.is_set():
            if slot.proc is None and not self._replace(slot):
                continue
            try:
                jobs = self.store.claim_jobs(self._batch_size(slot))
            except Exception as exc:   # a locked or unwritable database (disk full): wait, try again
                why = sanitize_error(f"{type(exc).__name__}: {exc}")
                if self._claim_error != why:   # once per state change
                    self._claim_error = why
                    log.error("queue_unavailable", worker=slot.name, error=why, detail="retrying every 2 s")
                self._stop.wait(2.0)
                continue
            if self._claim_error is not None:
                log.info("queue_available", worker=slot.name)
                self._claim_error = None
            if not jobs:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            if len(jobs) > 1 and any(j.attempts > 1 for j in jobs):
                # a job retried after a lost worker may be what killed it: alone, it cannot
                # take other jobs' attempts with it again
                for job in jobs:
                    self._run(slot, [job])
                    if slot.proc is None and job is not jobs[-1] and not self._replace(slot):
                        for rest in jobs[jobs.index(job) + 1:]:
                            self.store.defer_job(rest.id, "worker process unavailable; retrying", 5.0)
                        break
                continue
            self._run(slot, jobs)

    def _batch_size(self, slot: WorkerSlot) -> int:
        """How many ready jobs this slot takes at once: processing.batch_size when Stage 1 runs
        as a batch (processing.batch "on", or "auto" on a pack whose Stage 1 batches on its
        device), else 1."""
        p = self.cfg.processing
        if p.batch == "on" or (p.batch == "auto" and slot.info.get("batches_stage1")):
            return p.batch_size
        return 1

    def _run(self, slot: WorkerSlot, jobs: list[Job]) -> None:
        p = self.cfg.processing
        by_id = {j.id: j for j in jobs}
        # a batch may take as long as its jobs one after the other
        outcomes, lost = slot.run(jobs, p.job_timeout_s * len(jobs),
                                  on_early=lambda job_id, objects: self._early(by_id[job_id], objects))
        if len(jobs) > 1:
            log.info("batch_processed", worker=slot.name, size=len(jobs), jobs=[j.id for j in jobs], lost=lost)
        for i, job in enumerate(jobs):
            self._settle(slot, job, outcomes[i] if outcomes is not None else None, lost)

    def _settle(self, slot: WorkerSlot, job: Job, outcome: JobOutcome | None, lost: str | None) -> None:
        p = self.cfg.processing
        if outcome is not None and outcome.transient:
            self._deferrals = min(self._deferrals + 1, 8)
            delay = min(300.0, 5.0 * 2 ** (self._deferrals - 1))
            self.store.defer_job(job.id, f"{outcome.reason}; retrying", delay)
            if self._paused != outcome.reason:   # once per state change, not once per job
                self._paused = outcome.reason
                log.error("processing_paused", reason=outcome.reason, retry_in_s=delay,
                          detail="jobs wait and resume by themselves when the condition clears")
            state = JobState.QUEUED
        elif outcome is not None:
            if self._paused is not None:
                log.info("processing_resumed", after=self._paused)
                self._paused, self._deferrals = None, 0
            state = record_outcome(self.cfg, self.store, job, outcome)
        else:
            ctx = {"job_id": job.id, "sop_uid": job.sop_uid, "study_uid": job.study_uid, "attempt": job.attempts,
                   "worker": slot.name}
            if job.attempts < p.max_processing_attempts:
                self.store.requeue_job(job.id, f"{lost} (attempt {job.attempts} of {p.max_processing_attempts})",
                                       attempt=job.attempts)
                log.warning("job_interrupted", **ctx, reason=lost, retry=True)
                state = JobState.QUEUED
            else:
                reason = f"{lost} (attempt {job.attempts} of {p.max_processing_attempts}; parked)"
                self.store.fail_job(job.id, reason, attempt=job.attempts)
                log.warning("job_failed", **ctx, reason=reason)
                state = JobState.FAILED
        if self._on_state is not None:
            self._on_state(job, state)

    def _early(self, job: Job, objects: list[dict[str, str]]) -> None:
        """The child wrote the SR: queue its deliveries now (durably, fenced by the claim) and
        wake the delivery loop. A failure here only costs the head start: finish_processing
        plans the same deliveries again."""
        try:
            planned = record_early(self.cfg, self.store, job, objects)
        except Exception as exc:
            log.warning("early_delivery_not_planned", job_id=job.id, error=sanitize_error(f"{type(exc).__name__}: {exc}"))
            return
        if planned and self._on_planned is not None:
            self._on_planned()

    def _replace(self, slot: WorkerSlot) -> bool:
        slot.replacements += 1
        try:
            slot.start()
        except WorkerStartError as exc:
            log.error("worker_start_failed", worker=slot.name, error=str(exc))
            self._stop.wait(5.0)
            return False
        log.info("worker_replaced", worker=slot.name, pid=slot.pid, replacements=slot.replacements)
        return True

    def stop(self, timeout: float) -> list[str]:
        """Let each slot finish its job (up to timeout), then end the children."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for slot in self.slots:
            slot.stop()
        return [t.name for t in self.threads if t.is_alive()]
