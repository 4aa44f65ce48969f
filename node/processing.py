"""One job: spooled instance -> pixels -> inference -> result objects in the outbox -> deliveries.

Every failure of the input (unreadable file, undecodable pixels, colour, multi-frame, absurd
size, an inference error) ends the job as failed with the reason; nothing here may take the
node down.
"""
from __future__ import annotations

import json
import time
from io import BytesIO
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from cephnode.config.schema import NodeConfig
from cephnode.dicom_io.pixels import PixelDataError, read_dicom_image
from cephnode.dicom_io.spool import safe_name, write_atomic
from cephnode.domain.outputs import OutputKind
from cephnode.node.jobstore import MANUAL_TRACING, Job, JobStore
from cephnode.node.logs import get_logger, phi_fields
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


class Processor:
    def __init__(self, cfg: NodeConfig, store: JobStore, pipeline: Any):
        self.cfg = cfg
        self.store = store
        self.pipeline = pipeline
        self.outbox = Path(cfg.storage.outbox).resolve()
        self.kinds = wanted_kinds(cfg)
        self._callers = {c.ae_title: c for c in cfg.listen.allowed_callers}

    def run(self, job: Job) -> str:
        """Process one claimed job; returns its new state."""
        notes: list[str] = []   # per call: several workers may share this Processor
        timings: dict[str, float] = {}
        ctx = {"job_id": job.id, "sop_uid": job.sop_uid, "study_uid": job.study_uid, "attempt": job.attempts}
        log.info("job_started", **ctx)
        t_all = time.perf_counter()
        try:
            ds = self._read(job, timings)
            image, result = self._infer(ds, job, timings)
            qc_note(result, notes, ctx)
            objects = self._produce(ds, image, result, job, timings, notes)
        except JobFailed as exc:
            timings["total_ms"] = _ms(t_all)
            self.store.fail_job(job.id, str(exc), timings=timings)
            log.warning("job_failed", **ctx, reason=str(exc), timings_ms=timings)
            return "failed"
        except Exception as exc:  # a bug or an unexpected library error: still only this job fails
            timings["total_ms"] = _ms(t_all)
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
            self.store.fail_job(job.id, reason, timings=timings)
            log.exception("job_failed", **ctx, reason=reason, timings_ms=timings)
            return "failed"
        deliveries = self._deliveries(job, objects)
        timings["total_ms"] = _ms(t_all)
        state = self.store.finish_processing(job.id, [o.__dict__ for o in objects], deliveries, timings,
                                             note="; ".join(notes) or None)
        log.info("job_processed", **ctx, state=state, objects=len(objects), deliveries=len(deliveries),
                 degraded=bool(getattr(result, "degraded", False)),
                 qc=result.qc.verdict if getattr(result, "qc", None) else None, timings_ms=timings, **phi_fields(ds))
        return state

    # ---- steps ------------------------------------------------------------------------
    def _read(self, job: Job, timings: dict[str, float]) -> Dataset:
        t = time.perf_counter()
        try:
            ds = pydicom.dcmread(job.path)
        except FileNotFoundError:
            raise JobFailed(f"spooled file is missing: {job.path}") from None
        except Exception as exc:
            raise JobFailed(f"cannot read the instance: {type(exc).__name__}: {exc}") from None
        timings["read_ms"] = _ms(t)
        return ds

    def _infer(self, ds: Dataset, job: Job, timings: dict[str, float]):
        t = time.perf_counter()
        try:
            image = read_dicom_image(ds)
        except PixelDataError as exc:
            raise JobFailed(str(exc)) from None
        except Exception as exc:  # pydicom/numpy errors on hostile headers
            raise JobFailed(f"pixel data unusable: {type(exc).__name__}: {exc}") from None
        timings["decode_ms"] = _ms(t)
        if image.pixel_spacing_mm is None:
            log.info("pixel_spacing_unknown", job_id=job.id, sop_uid=job.sop_uid, detail=image.spacing_source)
        t = time.perf_counter()
        result = self.pipeline.run(image.pixels, pixel_spacing_mm=image.pixel_spacing_mm,
                                   patient_orientation=image.patient_orientation, name=job.sop_uid)
        timings["inference_ms"] = _ms(t)
        return image, result

    def _produce(self, ds: Dataset, image: Any, result: Any, job: Job, timings: dict[str, float],
                 notes: list[str]) -> list[ProducedObject]:
        t = time.perf_counter()
        folder = self.outbox / safe_name(job.study_uid) / safe_name(job.sop_uid)
        write_atomic(folder / "result.json", json.dumps(result.to_dict(), indent=1).encode())
        produced: list[ProducedObject] = []
        built = build_result_objects(ds, result, kinds=self.kinds, pack=self.pipeline.pack, image=image)
        if not built.objects and built.problems:
            raise JobFailed("no result object could be built: " + "; ".join(f"{k}: {v}" for k, v in built.problems.items()))
        notes.extend(f"{k} not built: {v}" for k, v in built.problems.items())
        for kind, out in built.objects.items():
            path = folder / f"{kind}-{safe_name(str(out.SOPInstanceUID))}.dcm"
            buf = BytesIO()
            out.save_as(buf, enforce_file_format=True)
            write_atomic(path, buf.getvalue())
            produced.append(ProducedObject(kind, str(out.SOPInstanceUID), str(out.SOPClassUID), str(path)))
        timings["outputs_ms"] = _ms(t)
        return produced

    def _deliveries(self, job: Job, objects: list[ProducedObject]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for dest in self.cfg.destinations:
            for o in objects:
                if o.kind in dest.kinds:
                    out.append({"destination": dest.name, "ae_title": dest.ae_title or "",   # DICOMweb: no AE,
                                "host": dest.host or dest.url, "port": dest.port or 0, **_obj(o)})  # the URL
        rts = self.cfg.return_to_sender
        if rts.enabled:
            caller = self._callers.get(job.calling_ae or "")
            if caller is None or caller.return_port is None or not job.peer_host:
                log.warning("return_to_sender_unknown", job_id=job.id, calling_ae=job.calling_ae,
                            detail="no return_port configured for this calling AE; results not sent back")
            else:
                for o in objects:
                    if o.kind in rts.kinds:
                        out.append({"destination": "sender", "ae_title": caller.ae_title, "host": job.peer_host,
                                    "port": caller.return_port, **_obj(o)})
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


def _obj(o: ProducedObject) -> dict[str, Any]:
    return {"kind": o.kind, "sop_uid": o.sop_uid, "sop_class": o.sop_class, "path": o.path}


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)

