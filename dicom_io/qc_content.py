"""What the quality gate (inference.quality) changes in the objects we send.

- ``fail``: the tracing is withheld. `withheld` strips every landmark and contour from the
  result before any object is built, so no builder can draw or measure it: the SR carries the
  QC verdict and its reasons and no measurement values, the GSPS and the tracing sheet show
  the warning instead of a tracing, and the SEG (nothing traced) is left out.
- ``review``: delivered, with the doubtful landmarks named in the SR's quality-control item and every
  measurement that uses one flagged ("qc-doubtful:<landmark>", cephalometry.analysis).
- ``pass``: as before, plus the quality-control item in the SR.

Kept in one module so the SR, GSPS and sheet builders each need only a line or two.
"""
from __future__ import annotations

from dataclasses import replace

from pydicom.sr.coding import Code

from cephnode.dicom_io import codes
from cephnode.domain.result import InferenceResult, Landmark

FAIL_HEADLINE = "AUTOMATED TRACING FAILED QUALITY CONTROL: needs manual tracing"


def verdict(result: InferenceResult) -> str | None:
    return result.qc.verdict if getattr(result, "qc", None) is not None else None


def failed(result: InferenceResult) -> bool:
    return verdict(result) == "fail"


def withheld(result: InferenceResult) -> InferenceResult:
    """A failed result with nothing left to draw or measure (the verdict and sizes stay)."""
    if not failed(result):
        return result
    gone = [Landmark(lm.name, None, None, 0.0, "unavailable", lm.predicted, "withheld: quality control failed")
            for lm in result.landmarks]
    stage0 = replace(result.stage0, anchors={k: None for k in result.stage0.anchors}, contours={}, profile=[])
    return replace(result, landmarks=gone, stage0=stage0)


def warning_lines(result: InferenceResult) -> list[str]:
    """Plain-text lines for the GSPS and the tracing sheet; empty for a pass."""
    qc = getattr(result, "qc", None)
    if qc is None or qc.verdict == "pass":
        return []
    if qc.verdict == "fail":
        return [FAIL_HEADLINE] + [f"- {r}" for r in qc.reasons]
    lines = ["QUALITY CONTROL: REVIEW"]
    if qc.doubtful_landmarks:
        lines.append("doubtful landmarks (marked ?): " + ", ".join(qc.doubtful_landmarks))
    return lines + [f"- {r}" for r in qc.reasons]


def sr_evaluation(result: InferenceResult) -> tuple[Code, Code, list[tuple[Code, Code]]] | None:
    """The SR's quality-control item, all coded: (concept, verdict, [(modifier concept, value)])
    with the reason kinds and the doubtful landmarks as modifiers. dicom_io.sr puts it in the
    report-level Qualitative Evaluations: it has no geometry, so it stays out of the drawable
    Imaging Measurements."""
    qc = getattr(result, "qc", None)
    if qc is None:
        return None
    modifiers = [(codes.QC_REASON, codes.QC_REASONS[k]) for k in dict.fromkeys(qc.codes) if k in codes.QC_REASONS]
    modifiers += [(codes.QC_DOUBTFUL, codes.LANDMARKS[n]) for n in qc.doubtful_landmarks]
    return codes.QC_VERDICT, codes.QC_VERDICTS[qc.verdict], modifiers
