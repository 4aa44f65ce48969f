"""Build the DICOM objects cephnode returns for one source image.

Each kind (domain.outputs.OutputKind) joins the source's study in a series of its own; UIDs
come from the source SOP Instance UID, the pack version and the kind, so a retry produces the
very same instances. Which kinds are built is the caller's choice (the node configures it per
destination). Results are keyed by kind: no caller has to work out what an object is.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from pydicom.dataset import Dataset

from cephnode.cephalometry.analysis import Analysis, analyse
from cephnode.cephalometry.tracing import NothingTraced
from cephnode.dicom_io import iod_lookup, qc_content
from cephnode.dicom_io.gsps import build_gsps
from cephnode.dicom_io.pixels import DicomImage
from cephnode.dicom_io.seg import build_seg
from cephnode.dicom_io.sr import build_sr
from cephnode.dicom_io.tracing_sheet import build_tracing_sheet
from cephnode.dicom_io.uids import derived_uid
from cephnode.domain.outputs import ALL_OUTPUT_KINDS, OutputKind, parse_kinds
from cephnode.domain.result import InferenceResult

iod_lookup.install()   # highdicom's IOD table walks, once per question (dicom_io/iod_lookup.py)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Builder:
    build: Callable[..., Dataset]
    series_number: int
    draws_pixels: bool          # takes the decoded source image (`image=`)


BUILDERS: dict[OutputKind, Builder] = {
    OutputKind.SR: Builder(build_sr, 9001, False),
    OutputKind.SEG: Builder(build_seg, 9002, False),
    OutputKind.GSPS: Builder(build_gsps, 9003, False),
    OutputKind.SC: Builder(build_tracing_sheet, 9004, True),
}
assert tuple(BUILDERS) == ALL_OUTPUT_KINDS


def series_uid(source: Dataset, pack_version: str, kind: OutputKind | str) -> str:
    return derived_uid(str(source.SOPInstanceUID), pack_version, f"series-{OutputKind(kind)}")


def instance_uid(source: Dataset, pack_version: str, kind: OutputKind | str) -> str:
    return derived_uid(str(source.SOPInstanceUID), pack_version, str(OutputKind(kind)))


def gated(result: InferenceResult, analysis: Analysis | None = None) -> tuple[InferenceResult, Analysis]:
    """The result and analysis the objects may show. A tracing the quality gate failed is
    withheld (nothing of an untrusted tracing leaves as fact) and measured again, once: a
    result already withheld has no landmark left and passes through as it is."""
    if qc_content.failed(result) and any(lm.available for lm in result.landmarks):
        result, analysis = qc_content.withheld(result), None
    return result, analysis if analysis is not None else analyse(result)


def build_output(kind: OutputKind, source: Dataset, result: InferenceResult, analysis: Analysis, *,
                 pack_name: str, pack_version: str, image: DicomImage | None = None) -> Dataset | None:
    """One object; None when the builder has nothing to show for this image (a SEG with
    nothing traced), which is logged, not an error. Other errors propagate. A tracing the
    quality gate failed is withheld here, whoever calls: no builder can draw or measure it."""
    result, analysis = gated(result, analysis)
    builder = BUILDERS[kind]
    extra = {"image": image} if builder.draws_pixels else {}
    try:
        return builder.build(
            source, result, analysis, pack_name=pack_name, pack_version=pack_version,
            series_uid=series_uid(source, pack_version, kind), sop_uid=instance_uid(source, pack_version, kind),
            series_number=builder.series_number, **extra,
        )
    except NothingTraced as exc:
        log.warning("output_skipped", kind=str(kind), reason=str(exc), source_sop_uid=str(source.SOPInstanceUID))
        return None


def build_outputs(
    source: Dataset,
    result: InferenceResult,
    *,
    kinds: str | Iterable[str] = ALL_OUTPUT_KINDS,
    pack_name: str,
    pack_version: str,
    analysis: Analysis | None = None,
    image: DicomImage | None = None,
) -> dict[OutputKind, Dataset]:
    """The objects of `kinds` for one source image, keyed by kind in build order. A kind whose
    builder has nothing to show is left out (logged) rather than failing the others. `image` is
    the source already decoded (dicom_io.pixels), if the caller has it; else it is decoded here."""
    wanted = parse_kinds(kinds)
    result, analysis = gated(result, analysis)
    out: dict[OutputKind, Dataset] = {}
    for kind in wanted:
        ds = build_output(kind, source, result, analysis, pack_name=pack_name, pack_version=pack_version, image=image)
        if ds is not None:
            out[kind] = ds
    log.info(
        "outputs_built", kinds=[str(k) for k in out], study_uid=str(source.get("StudyInstanceUID", "")),
        source_sop_uid=str(source.SOPInstanceUID), sop_uids=[str(d.SOPInstanceUID) for d in out.values()],
        measurements=len(analysis.computed), omitted=len(analysis.omitted), pack_version=pack_version,
        qc=qc_content.verdict(result),
    )
    return out
