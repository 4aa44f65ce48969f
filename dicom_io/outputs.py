"""Build the DICOM objects cephnode returns for one source image.

Each kind joins the source's study in a series of its own; UIDs come from the source SOP
Instance UID, the pack version and the kind, so a retry produces the very same instances.
Which kinds are built is the caller's choice (the node configures it per destination).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable

import structlog
from pydicom.dataset import Dataset

from cephnode.cephalometry.analysis import Analysis, analyse
from cephnode.cephalometry.tracing import NothingTraced
from cephnode.dicom_io.pixels import DicomImage
from cephnode.dicom_io.uids import derived_uid
from cephnode.inference.result import InferenceResult

log = structlog.get_logger(__name__)

OUTPUT_KINDS: tuple[str, ...] = ("sr", "seg", "gsps", "sc")

# kind -> (module, builder function, series number, draws the source's pixels). Builders are
# imported when first used, so a destination that wants only the SR does not load the drawing code.
_BUILDERS: dict[str, tuple[str, str, int, bool]] = {
    "sr": ("cephnode.dicom_io.sr", "build_sr", 9001, False),
    "seg": ("cephnode.dicom_io.seg", "build_seg", 9002, False),
    "gsps": ("cephnode.dicom_io.gsps", "build_gsps", 9003, False),
    "sc": ("cephnode.dicom_io.tracing_sheet", "build_tracing_sheet", 9004, True),
}
assert tuple(_BUILDERS) == OUTPUT_KINDS


def _kind(ds: Dataset) -> str:
    return {"SR": "sr", "SEG": "seg", "PR": "gsps"}.get(str(ds.get("Modality", "")), "sc")


def parse_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    """'sr,seg' or ['sr', 'seg'] -> ('sr', 'seg') in OUTPUT_KINDS order; unknown kinds are an error."""
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    wanted = {k.strip().lower() for k in items if k.strip()}
    unknown = wanted - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}")
    return tuple(k for k in OUTPUT_KINDS if k in wanted)


def series_uid(source: Dataset, pack_version: str, kind: str) -> str:
    return derived_uid(str(source.SOPInstanceUID), pack_version, f"series-{kind}")


def instance_uid(source: Dataset, pack_version: str, kind: str) -> str:
    return derived_uid(str(source.SOPInstanceUID), pack_version, kind)


def build_outputs(
    source: Dataset,
    result: InferenceResult,
    *,
    kinds: str | Iterable[str] = OUTPUT_KINDS,
    pack_name: str,
    pack_version: str,
    analysis: Analysis | None = None,
    image: DicomImage | None = None,
) -> list[Dataset]:
    """The objects of `kinds` for one source image, in OUTPUT_KINDS order. A SEG with nothing
    traced is left out (logged) rather than failing the SR and the others. `image` is the
    source already decoded (dicom_io.pixels), if the caller has it; else it is decoded here."""
    wanted = parse_kinds(kinds)
    analysis = analysis if analysis is not None else analyse(result)
    out = []
    for kind in wanted:
        module, func, number, draws_pixels = _BUILDERS[kind]
        build = getattr(importlib.import_module(module), func)
        extra = {"image": image} if draws_pixels else {}
        try:
            ds = build(
                source, result, analysis, pack_name=pack_name, pack_version=pack_version,
                series_uid=series_uid(source, pack_version, kind), sop_uid=instance_uid(source, pack_version, kind),
                series_number=number, **extra,
            )
        except NothingTraced as exc:
            log.warning("output_skipped", kind=kind, reason=str(exc), source_sop_uid=str(source.SOPInstanceUID))
            continue
        out.append(ds)
    log.info(
        "outputs_built", kinds=[k for k in wanted if k in {_kind(d) for d in out}], study_uid=str(source.get("StudyInstanceUID", "")),
        source_sop_uid=str(source.SOPInstanceUID), sop_uids=[str(d.SOPInstanceUID) for d in out],
        measurements=len(analysis.computed), omitted=len(analysis.omitted), pack_version=pack_version,
    )
    return out
