"""Real inputs for the report tests: a DX built from a real ISBI image, and an InferenceResult
holding that image's real annotations (ISBI labels 19 of the 25 landmarks; the other six are
unavailable, which exercises every 'left out' path of the report)."""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from cephnode.cephalometry.annotations import result_from_points
from cephnode.inference.landmarks import ISBI_19
from cephnode.inference.result import InferenceResult
from tests.support.dicomgen import make_dx, read_grey
from cephnode.training import isbi

PACK_NAME = "isbi-annotation"
PACK_VERSION = "test-1"


@dataclass
class ReportCase:
    case_id: str
    source: Dataset
    result: InferenceResult


def isbi_report_case(case_id: str = "001", *, annotator: str = "senior", spacing: bool = True) -> ReportCase:
    case = next(c for c in isbi.load_cases() if c.case_id == case_id)
    img = read_grey(case.image_path)
    ps = isbi.pixel_spacing_mm() if spacing else None
    source = make_dx(img, pixel_spacing_mm=isbi.pixel_spacing_mm(), patient_id=f"ISBI-{case_id}",
                     patient_name=f"Isbi^{case_id}")
    if not spacing:
        # (make_dx(pixel_spacing_mm=None) trips over its own attribute deletion; drop them here.)
        del source.ImagerPixelSpacing
        del source.EstimatedRadiographicMagnificationFactor
    points = getattr(case, annotator)
    result = result_from_points(
        dict(zip(ISBI_19, map(tuple, points))), width=img.shape[1], height=img.shape[0],
        pixel_spacing_mm=ps, name=str(source.SOPInstanceUID), face="right",
        source=f"ISBI 2015 {annotator} annotation", missing_note="not labelled in ISBI 2015",
    )
    return ReportCase(case_id, source, result)
