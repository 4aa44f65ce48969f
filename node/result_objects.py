"""The one place where the node turns an inference result into DICOM objects.

dicom_io.outputs makes the objects (SR, SEG, GSPS, SC); their UIDs are derived from the source
SOP Instance UID and the pack version, so a job re-run after a crash makes the very same
objects and the archive never holds duplicates.

Each kind is built on its own (the analysis is computed once and shared), so a kind that
cannot be built for this image does not hold back the others: what exists is delivered and the
missing kind is reported with the job.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from cephnode.domain.outputs import OutputKind
from cephnode.node.logs import get_logger

log = get_logger("cephnode.result_objects")


@dataclass
class ResultObjects:
    objects: dict[OutputKind, Dataset] = field(default_factory=dict)
    problems: dict[OutputKind, str] = field(default_factory=dict)     # why a kind is missing


def build_result_objects(source: Dataset, result: Any, *, kinds: Iterable[OutputKind], pack: Any,
                         image: Any = None,
                         on_built: Callable[[OutputKind, Dataset], None] | None = None) -> ResultObjects:
    """Every kind in `kinds`, in that order. on_built(kind, dataset) is called as each one is
    made, before the next is built (the node writes the SR and sends it on its way while the
    others are still to come); its errors are the caller's, not a builder problem."""
    from cephnode.dicom_io.outputs import build_output, gated

    out = ResultObjects()
    result, analysis = gated(result)    # analysed once for every kind
    for kind in kinds:
        kind = OutputKind(kind)
        try:
            ds = build_output(kind, source, result, analysis, pack_name=pack.name, pack_version=pack.version,
                              image=image)
        except Exception as exc:  # one kind failing must not cost the others
            out.problems[kind] = f"{type(exc).__name__}: {exc}"
            log.exception("output_not_built", kind=str(kind), sop_uid=str(source.get("SOPInstanceUID", "")))
            continue
        if ds is None:
            out.problems[kind] = "nothing to draw for this image (left out by the builder)"
        else:
            out.objects[kind] = ds
            if on_built is not None:
                on_built(kind, ds)
    return out
