"""The one place where the node turns an inference result into DICOM objects.

dicom_io.outputs.build_outputs (SR, SEG, GSPS, SC) makes the objects; their UIDs are derived
from the source SOP Instance UID and the pack version, so a job re-run after a crash makes the
very same objects and the archive never holds duplicates.
"""
from __future__ import annotations

from typing import Any, Iterator

from pydicom.dataset import Dataset

from node.logs import get_logger

log = get_logger("cephnode.result_objects")


def _builder():
    try:
        from dicom_io.outputs import build_outputs
    except ModuleNotFoundError as exc:
        if exc.name != "dicom_io.outputs":
            raise
        return None
    return build_outputs


def build_result_objects(source: Dataset, result: Any, *, kinds: list[str], pack: Any) -> Iterator[tuple[str, Dataset]]:
    """(kind, dataset) for each requested kind the outputs module can build."""
    build = _builder()
    if build is None:
        log.warning("outputs_unavailable", detail="dicom_io.outputs is not installed: only result.json is kept")
        return iter(())
    objects = build(source, result, kinds=tuple(kinds), pack_name=pack.name, pack_version=pack.version)
    return ((_kind_of(ds, kinds), ds) for ds in objects)


def _kind_of(ds: Dataset, kinds: list[str]) -> str:
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
