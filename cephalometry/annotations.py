"""Wrap hand-placed landmarks (an annotator's, a data set's) as an InferenceResult, so that the
analysis and the DICOM writers treat them exactly like a model's output."""
from __future__ import annotations

from collections.abc import Mapping

from cephnode.inference.landmarks import CANONICAL_25
from cephnode.inference.result import InferenceResult, Landmark, Orientation, Stage0Diagnostics


def result_from_points(
    points: Mapping[str, tuple[float, float]],
    *,
    width: int,
    height: int,
    pixel_spacing_mm: tuple[float, float] | None,
    name: str,
    face: str,
    source: str = "manual annotation",
    missing_note: str = "not annotated",
) -> InferenceResult:
    """points: landmark name -> (x, y) in image pixels; landmarks not given are unavailable.
    face: "left" or "right", the way the face looks in the image."""
    if face not in ("left", "right"):
        raise ValueError(f"face must be 'left' or 'right', not {face!r}")
    unknown = set(points) - set(CANONICAL_25)
    if unknown:
        raise ValueError(f"unknown landmark names: {sorted(unknown)}")
    landmarks = []
    for n in CANONICAL_25:
        if n in points:
            x, y = points[n]
            landmarks.append(Landmark(n, float(x), float(y), 1.0, "high", True, source))
        else:
            landmarks.append(Landmark(n, None, None, 0.0, "unavailable", False, missing_note))
    return InferenceResult(
        image_name=name, width=int(width), height=int(height), landmarks=landmarks,
        stage0=Stage0Diagnostics(ok=True, reason=source), orientation=Orientation(0, face == "right", "given"),
        degraded=False, timings_ms={}, providers={}, pack_name=source, pack_version="annotation",
        pixel_spacing_mm=pixel_spacing_mm,
    )
