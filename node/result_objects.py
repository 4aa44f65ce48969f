"""The one place where the node turns an inference result into DICOM objects.

dicom_io.outputs.build_outputs (SR, SEG, GSPS, SC) makes the objects; their UIDs are derived
from the source SOP Instance UID and the pack version, so a job re-run after a crash makes the
very same objects and the archive never holds duplicates.

Each kind is built on its own (the analysis is computed once and shared), so a kind that
cannot be built for this image does not hold back the others: what exists is delivered and the
missing kind is reported with the job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from cephnode.node.logs import get_logger

log = get_logger("cephnode.result_objects")


@dataclass
class ResultObjects:
    objects: list[tuple[str, Dataset]] = field(default_factory=list)   # (kind, dataset)
    problems: dict[str, str] = field(default_factory=dict)             # kind -> why it is missing


def build_result_objects(source: Dataset, result: Any, *, kinds: list[str], pack: Any,
                         image: Any = None) -> ResultObjects:
    from cephnode.cephalometry.analysis import analyse
    from cephnode.dicom_io.outputs import build_outputs

    out = ResultObjects()
    analysis = analyse(result)
    for kind in kinds:
        try:
            built = build_outputs(source, result, kinds=(kind,), pack_name=pack.name, pack_version=pack.version,
                                  analysis=analysis, image=image)
        except Exception as exc:  # one kind failing must not cost the others
            out.problems[kind] = f"{type(exc).__name__}: {exc}"
            log.exception("output_not_built", kind=kind, sop_uid=str(source.get("SOPInstanceUID", "")))
            continue
        if not built:
            out.problems[kind] = "nothing to draw for this image (left out by the builder)"
        out.objects.extend((_kind_of(ds), ds) for ds in built)
    return out


def _kind_of(ds: Dataset) -> str:
    """The output kind of an object, from its SOP class."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return "sr"
    if sop_class == "1.2.840.10008.5.1.4.1.1.66.4":
        return "seg"
    if sop_class == "1.2.840.10008.5.1.4.1.1.11.1":
        return "gsps"
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.7"):
        return "sc"
    return str(ds.get("Modality", "other")).lower()
