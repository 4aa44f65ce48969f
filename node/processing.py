"""One job: spooled instance -> pixels -> inference -> result objects in the outbox -> deliveries.

The SR is built first and, once written, handed to `early` (the worker process sends it to the
node, which queues its deliveries at once: node.jobstore.plan_deliveries), so the report reaches
the archive while the SEG, GSPS and tracing sheet are still being built (issue 14).

Every failure of the input (unreadable file, undecodable pixels, colour, multi-frame, absurd
size, an inference error) ends the job as failed with the reason; nothing here may take the
node down.
"""
from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pydicom
from pydicom.dataset import Dataset

from cephnode.config.schema import NodeConfig
from cephnode.dicom_io.encode import file_bytes
from cephnode.dicom_io.pixels import PixelDataError, read_dicom_image
from cephnode.dicom_io.spool import is_valid_uid, safe_name, write_atomic
from cephnode.node import faults
from cephnode.domain.outputs import OutputKind
from cephnode.domain.states import JobState
from cephnode.node.jobstore import MANUAL_TRACING, Job, JobStore, PlannedDelivery
from cephnode.node.logs import get_logger, sanitize_error, sanitize_traceback
from cephnode.node.result_objects import build_result_objects

log = get_logger("cephnode.processing")


@dataclass
class ProducedObject:
    kind: OutputKind
    sop_uid: str
    sop_class: str
    path: str


class JobFailed(Exception):
    """The input cannot be processed; the message is the reason shown to the admin."""


def wanted_kinds(cfg: NodeConfig) -> list[OutputKind]:
    """Every kind some destination (or the outbox) wants, in build order."""
    kinds = set(cfg.processing.outbox_kinds)
    for d in cfg.destinations:
        kinds.update(d.kinds)
    if cfg.return_to_sender.enabled:
        kinds.update(cfg.return_to_sender.kinds)
    return [k for k in OutputKind if k in kinds]


@dataclass
class JobOutcome:
    """What a worker process sends back for one job: small and picklable (paths and UIDs,
    never pixels or datasets). ok=False carries the reason shown to the admin."""
    ok: bool
    objects: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    degraded: bool = False
    qc: str | None = None     # the quality gate's verdict (pass, review, fail)
    transient: bool = False   # a condition of this host (disk full), not of the input: try again later


class Processor:
    """The unsafe part of a job (decoding, inference, building objects). It runs inside a
    worker process (node.workers) and touches no database: the parent records the outcome."""

    def __init__(self, cfg: NodeConfig, pipeline: Any):
        self.cfg = cfg
        self.pipeline = pipeline
        self.outbox = Path(cfg.storage.outbox).resolve()
        self.kinds = wanted_kinds(cfg)

    def execute(self, job: Job, early: Callable[[int, list[dict[str, str]]], None] | None = None) -> JobOutcome:
        """Process one claimed job. Never raises: every failure, including a BaseException
        from a native decoder (a Rust panic surfaces as pyo3's PanicException, which is not an
        Exception), becomes a failed outcome with its reason. `early(job_id, objects)` receives
        the SR as soon as its file is written (the outcome lists it again at the end)."""
        return self.execute_batch([job], early)[0]

    def execute_batch(self, jobs: list[Job],
                      early: Callable[[int, list[dict[str, str]]], None] | None = None) -> list[JobOutcome]:
        """Several claimed jobs, one outcome each in order. Each is read and decoded on its own;
        the images that decoded go through inference together (Pipeline.run_batch: Stage 1 as
        one batch) and their objects are built one job after the other. One job's failure is
        its own: a batch whose inference raises is run again image by image, so the error
        lands on the image that caused it. A single job takes Pipeline.run, as always."""
        states = [_JobRun(job) for job in jobs]
        for st in states:
            log.info("job_started", **st.ctx)
            st.guard(lambda st=st: self._decode(st))
        ready = [st for st in states if st.outcome is None]
        if len(ready) > 1:
            t, c = time.perf_counter(), time.process_time()
            try:
                results = self.pipeline.run_batch(
                    [{"image": st.image.pixels, "pixel_spacing_mm": st.image.pixel_spacing_mm,
                      "patient_orientation": st.image.patient_orientation, "name": st.job.sop_uid} for st in ready],
                    batch_stage1=True)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                log.warning("batch_inference_failed", jobs=[st.job.id for st in ready],
                            error=sanitize_error(f"{type(exc).__name__}: {exc}"), detail="running them one by one")
            else:
                share, cpu_share = _ms(t) / len(ready), _cpu_ms(c) / len(ready)
                for st, result in zip(ready, results):
                    st.result = result
                    st.timings["inference_ms"] = round(share, 2)
                    st.timings["inference_cpu_ms"] = round(cpu_share, 2)
                    st.timings["batch_size"] = len(ready)
                stage1 = getattr(getattr(self.pipeline, "sessions", None), "io", {}).get("stage1")
                log.info("batch_inferred", jobs=[st.job.id for st in ready], size=len(ready), inference_ms=_ms(t),
                         stage1_one_call=bool(getattr(stage1, "dynamic_batch", False)))
        for st in ready:
            st.guard(lambda st=st: self._finish(st, early))
        return [st.outcome for st in states]

    def _decode(self, st: "_JobRun") -> None:
        c = time.process_time()
        st.ds = self._read(st.job, st.timings)
        st.image = self._image(st.ds, st.job, st.timings)
        st.timings["decode_cpu_ms"] = _cpu_ms(c)

    def _finish(self, st: "_JobRun", early: Callable[[int, list[dict[str, str]]], None] | None) -> None:
        if st.result is None:
            t, c = time.perf_counter(), time.process_time()
            st.result = self.pipeline.run(st.image.pixels, pixel_spacing_mm=st.image.pixel_spacing_mm,
                                          patient_orientation=st.image.patient_orientation, name=st.job.sop_uid)
            st.timings["inference_ms"] = _ms(t)
            st.timings["inference_cpu_ms"] = _cpu_ms(c)
        image, result = st.image, st.result
        if image.pixel_spacing_mm is None:
            st.notes.append(f"pixel spacing {image.spacing_source}: no distances in mm")
        qc_note(result, st.notes, st.ctx)
        hand_on = None if early is None else (lambda objects: early(st.job.id, objects))
        objects = self._produce(st.ds, image, result, st.job, st.timings, st.notes, hand_on, st.t0)
        st.timings["total_ms"] = _ms(st.t0)
        qc = getattr(result, "qc", None)
        st.outcome = JobOutcome(True, [o.__dict__ for o in objects], st.notes, st.timings,
                                degraded=bool(getattr(result, "degraded", False)),
                                qc=str(qc.verdict) if qc else None)

    # ---- steps ------------------------------------------------------------------------
    def _read(self, job: Job, timings: dict[str, float]) -> Dataset:
        t = time.perf_counter()
        try:
            ds = pydicom.dcmread(job.path)
            faults.inject(ds)  # test-only, inert unless CEPHNODE_FAULT_INJECTION=1
        except FileNotFoundError:
            raise JobFailed(f"spooled file is missing: {job.path}") from None
        except MemoryError:
            raise
        except Exception as exc:
            raise JobFailed(f"cannot read the instance: {type(exc).__name__}: {exc}") from None
        timings["read_ms"] = _ms(t)
        if "SOPInstanceUID" not in ds or "PixelData" not in ds and "SOPClassUID" not in ds:
            # pydicom returns what it could parse; a data set cut short can come back empty
            raise JobFailed("cannot read the instance: the data set is truncated or empty")
        # Output objects copy these UIDs: one that is not a UID ('../x', 1 MB of digits) must
        # never reach them.
        bad = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if not is_valid_uid(str(ds.get(kw, "") or ""))]
        if bad:
            raise JobFailed(f"invalid UID in {', '.join(bad)} (not a valid DICOM UID; never copied into outputs)")
        return ds

    def _image(self, ds: Dataset, job: Job, timings: dict[str, float]):
        t = time.perf_counter()
        try:
            image = read_dicom_image(ds, max_pixels=self.cfg.limits.max_image_pixels)
        except PixelDataError as exc:
            raise JobFailed(str(exc)) from None
        except MemoryError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pydicom/numpy errors on hostile headers, native decoder panics
            raise JobFailed(f"pixel data unusable: {type(exc).__name__}: {exc}") from None
        timings["decode_ms"] = _ms(t)
        if image.pixel_spacing_mm is None:
            log.info("pixel_spacing_unknown", job_id=job.id, sop_uid=job.sop_uid, detail=image.spacing_source)
        return image

    def _produce(self, ds: Dataset, image: Any, result: Any, job: Job, timings: dict[str, float],
                 notes: list[str], early: Callable[[list[dict[str, str]]], None] | None = None,
                 t_job: float | None = None) -> list[ProducedObject]:
        t, c = time.perf_counter(), time.process_time()
        folder = self.outbox / safe_name(job.study_uid) / safe_name(job.sop_uid)
        write_atomic(folder / "result.json", json.dumps(result.to_dict(), indent=1).encode())
        produced: list[ProducedObject] = []

        def write(kind: OutputKind, out: Dataset) -> None:
            path = folder / f"{kind}-{safe_name(str(out.SOPInstanceUID))}.dcm"
            write_atomic(path, file_bytes(out))   # the bytes save_as writes, faster for the SR
            produced.append(ProducedObject(kind, str(out.SOPInstanceUID), str(out.SOPClassUID), str(path)))
            if kind is OutputKind.SR:
                timings["sr_written_ms"] = _ms(t_job if t_job is not None else t)
                if early is not None:
                    early([produced[-1].__dict__])
                    faults.after_early(ds, job.attempts)   # test-only, inert unless CEPHNODE_FAULT_INJECTION=1

        built = build_result_objects(ds, result, kinds=self.kinds, pack=self.pipeline.pack, image=image,
                                     on_built=write)
        if not built.objects and built.problems:
            raise JobFailed("no result object could be built: " + "; ".join(f"{k}: {v}" for k, v in built.problems.items()))
        notes.extend(f"{k} not built: {v}" for k, v in built.problems.items())
        timings["outputs_ms"] = _ms(t)
        timings["outputs_cpu_ms"] = _cpu_ms(c)   # this process's CPU (every thread): contention distorts it less
        return produced


class _JobRun:
    """One job inside execute_batch: what it has so far, and its outcome once settled."""

    def __init__(self, job: Job):
        self.job = job
        self.ctx = {"job_id": job.id, "sop_uid": job.sop_uid, "study_uid": job.study_uid, "attempt": job.attempts}
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.ds: Any = None
        self.image: Any = None
        self.result: Any = None
        self.outcome: JobOutcome | None = None

    def guard(self, step: Callable[[], None]) -> None:
        """Run a step; any failure settles this job (and only this job) as failed."""
        try:
            step()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.timings["total_ms"] = _ms(self.t0)
            self.outcome = _failure(exc, self.timings, self.ctx)


def _failure(exc: BaseException, timings: dict[str, float], ctx: dict[str, Any]) -> JobOutcome:
    if isinstance(exc, JobFailed):
        return JobOutcome(False, timings=timings, reason=sanitize_error(str(exc)))
    if isinstance(exc, MemoryError):
        return JobOutcome(False, timings=timings, reason="out of memory: the job exceeded the worker's memory limit")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):   # the disk fills and empties again: not the job's fault
            return JobOutcome(False, timings=timings, reason="no space left on the outbox disk", transient=True)
        return JobOutcome(False, timings=timings, reason=sanitize_error(f"unexpected error: OSError: {exc}"))
    # a bug, a library error or a native panic: still only this job fails
    reason = sanitize_error(f"unexpected error: {type(exc).__name__}: {exc}")
    log.error("job_error", **ctx, reason=reason, traceback=sanitize_traceback(exc))
    return JobOutcome(False, timings=timings, reason=reason)


def record_outcome(cfg: NodeConfig, store: JobStore, job: Job, outcome: JobOutcome) -> JobState:
    """Parent side: write a worker's outcome to the queue (objects and their deliveries in
    one transaction, or the failure with its reason); returns the job's new state."""
    ctx = {"job_id": job.id, "sop_uid": job.sop_uid, "study_uid": job.study_uid, "attempt": job.attempts}
    if not outcome.ok:
        # attempt: the claim's fencing token (a worker whose lease expired changes nothing)
        store.fail_job(job.id, outcome.reason or "failed", timings=outcome.timings, attempt=job.attempts)
        log.warning("job_failed", **ctx, reason=outcome.reason, timings_ms=outcome.timings)
        return JobState.FAILED
    deliveries = _deliveries(cfg, job, outcome.objects)
    state = store.finish_processing(job.id, outcome.objects, deliveries, outcome.timings,
                                    note="; ".join(outcome.notes) or None, attempt=job.attempts)
    log.info("job_processed", **ctx, state=state, objects=len(outcome.objects), deliveries=len(deliveries),
             degraded=outcome.degraded, qc=outcome.qc, timings_ms=outcome.timings)
    return state


def record_early(cfg: NodeConfig, store: JobStore, job: Job, objects: list[dict[str, str]]) -> bool:
    """Parent side: queue the deliveries of objects a running job has already written (the SR).
    False when the claim no longer stands (nothing queued)."""
    deliveries = _deliveries(cfg, job, objects, quiet=True)
    planned = store.plan_deliveries(job.id, deliveries, attempt=job.attempts)
    log.info("deliveries_planned_early", job_id=job.id, sop_uid=job.sop_uid, study_uid=job.study_uid,
             kinds=[o["kind"] for o in objects], deliveries=len(deliveries), planned=planned)
    return planned


def _deliveries(cfg: NodeConfig, job: Job, objects: list[dict[str, str]], *,
                quiet: bool = False) -> list[PlannedDelivery]:
    out: list[PlannedDelivery] = []
    for dest in cfg.destinations:
        for o in objects:
            if o["kind"] in dest.kinds:
                # a DICOMweb destination has no AE title, and its URL stands for host and port
                out.append(PlannedDelivery(dest.name, dest.ae_title or "", dest.host or dest.url, dest.port or 0,
                                           **_obj(o)))
    rts = cfg.return_to_sender
    if rts.enabled:
        caller = {c.ae_title: c for c in cfg.listen.allowed_callers}.get(job.calling_ae or "")
        if caller is None or caller.return_port is None or not job.peer_host:
            if quiet:   # said once per job, when the job finishes
                return out
            log.warning("return_to_sender_unknown", job_id=job.id, calling_ae=job.calling_ae,
                        detail="no return_port configured for this calling AE; results not sent back")
        else:
            for o in objects:
                if o["kind"] in rts.kinds:
                    out.append(PlannedDelivery("sender", caller.ae_title, job.peer_host, caller.return_port, **_obj(o)))
    return out


def qc_note(result: Any, notes: list[str], ctx: dict[str, Any]) -> None:
    """The quality gate's verdict on the job: a failed tracing is delivered as a failure (see
    dicom_io.qc_content) and the job is listed as needing manual tracing; a review is noted."""
    qc = getattr(result, "qc", None)
    if qc is None or qc.verdict == "pass":
        return
    if qc.verdict == "fail":
        notes.insert(0, f"{MANUAL_TRACING}: quality control failed: " + "; ".join(qc.reasons))
        log.warning("needs_manual_tracing", **ctx, reasons=qc.reasons)
    else:
        notes.insert(0, "quality control review: " + "; ".join(qc.reasons))
        log.info("qc_review", **ctx, reasons=qc.reasons, doubtful=qc.doubtful_landmarks)


def _obj(o: dict[str, str]) -> dict[str, str]:
    return {"kind": o["kind"], "sop_uid": o["sop_uid"], "sop_class": o["sop_class"], "path": o["path"]}


def _cpu_ms(c0: float) -> float:
    return round((time.process_time() - c0) * 1000, 2)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)

