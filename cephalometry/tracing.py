"""The traced structures of a cephalogram as polylines in source-image pixels.

Stage 0 of the pipeline traces real contours (soft-tissue profile, cranial base, palatal plane,
mandibular border and symphysis, incisor axes). When it did not (degraded run, or landmarks
that came from an annotator), each structure is drawn through the landmarks that lie on it, and
says so, so the SEG / GSPS / tracing sheet never show a contour nobody traced.
"""
from __future__ import annotations

from dataclasses import dataclass

from cephnode.inference.result import InferenceResult

# structure key -> (display name, landmarks it passes through, in drawing order)
STRUCTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "soft_tissue_profile": ("Soft-tissue profile", ("Prn", "Sn", "UL", "LL", "Pog_soft")),
    "cranial_base": ("Cranial base (S-N)", ("S", "N")),
    "palatal_plane": ("Palatal plane", ("PNS", "ANS")),
    "mandibular_border": ("Mandible (ramus and border)", ("Co", "Ar", "Go", "Me")),
    "mandibular_symphysis": ("Symphysis", ("B", "Pog", "Gn", "Me")),
    "upper_incisor_axis": ("Upper incisor axis", ("U1_root", "U1_tip")),
    "lower_incisor_axis": ("Lower incisor axis", ("L1_root", "L1_tip")),
}

# Reference lines drawn beside the structures (name, from, to).
REFERENCE_LINES: tuple[tuple[str, str, str], ...] = (
    ("SN", "S", "N"), ("FH", "Po", "Or"), ("MP", "Go", "Me"), ("N-Pog", "N", "Pog"),
    ("E-line", "Prn", "Pog_soft"), ("N-A", "N", "A"), ("N-B", "N", "B"),
)


class NothingTraced(ValueError):
    """No structure could be traced (no Stage 0 contour and too few landmarks)."""


@dataclass(frozen=True)
class TracedStructure:
    key: str
    name: str
    points: tuple[tuple[float, float], ...]   # (x, y) source pixels, open polyline
    source: str                                # "stage 0 contour" or "landmarks S-N"


def traced_structures(result: InferenceResult) -> list[TracedStructure]:
    out = []
    contours = dict(result.stage0.contours or {})
    if result.stage0.profile:
        contours.setdefault("soft_tissue_profile", list(result.stage0.profile))
    for key, (name, through) in STRUCTURES.items():
        pts = contours.get(key) or []
        if len(pts) >= 2:
            out.append(TracedStructure(key, name, tuple((float(x), float(y)) for x, y in pts), "stage 0 contour"))
            continue
        have = [result.landmark(n) for n in through if result.landmark(n).available]
        if len(have) >= 2:
            out.append(TracedStructure(key, name, tuple((lm.x, lm.y) for lm in have),
                                       "landmarks " + "-".join(lm.name for lm in have)))
    return out


def reference_lines(result: InferenceResult) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    out = []
    for name, a, b in REFERENCE_LINES:
        la, lb = result.landmark(a), result.landmark(b)
        if la.available and lb.available:
            out.append((name, (la.x, la.y), (lb.x, lb.y)))
    return out
