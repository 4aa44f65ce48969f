"""Phase 0D: Douglas-Peucker simplification in millimetres and the anchor rules.

All points on the 512 grid, canonical pose (face left). Polylines are open (N, 2) arrays.
"""
from __future__ import annotations

import cv2
import numpy as np

# Douglas-Peucker tolerance per class, millimetres.
DP_TOLERANCE_MM = {
    "mandibular_symphysis": 0.5, "upper_incisor_axis": 0.5, "lower_incisor_axis": 0.5,
    "mandibular_border": 1.0, "palatal_plane": 1.0, "cranial_base": 2.0,
}
DEFAULT_FIELD_MM = (200.0, 250.0)     # assumed (width, height) of the radiograph when spacing is unknown


def work_px_per_mm(width: int, height: int, pixel_spacing_mm: tuple[float, float] | None,
                   rotated: bool = False) -> float:
    """Pixels per millimetre on the 512 working grid (mean of both axes).

    pixel_spacing_mm is (row, column) of the ORIGINAL image; when unknown, the image is
    taken to span a 200 x 250 mm field (its shorter side 200 mm). rotated: the canonical
    pose is a quarter turn of the original, which only swaps axes (the mean is unchanged)."""
    if pixel_spacing_mm is not None:
        row_mm, col_mm = pixel_spacing_mm
        mm_x = col_mm * width / 512.0        # mm per 512-pixel along the original's columns
        mm_y = row_mm * height / 512.0
    else:
        short, long_ = DEFAULT_FIELD_MM
        fw, fh = (short, long_) if width <= height else (long_, short)
        mm_x, mm_y = fw / 512.0, fh / 512.0
    return float(0.5 * (1.0 / mm_x + 1.0 / mm_y))


def simplify(poly: np.ndarray, tolerance_px: float) -> np.ndarray:
    if len(poly) < 3:
        return poly.copy()
    out = cv2.approxPolyDP(poly.astype(np.float32).reshape(-1, 1, 2), float(tolerance_px), False)
    return out.reshape(-1, 2).astype(np.float64)


def orient_towards(poly: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the polyline ordered so that its end nearest ``target`` is last."""
    d0 = np.hypot(*(poly[0] - target))
    d1 = np.hypot(*(poly[-1] - target))
    return poly[::-1].copy() if d0 < d1 else poly


def arc_fraction(poly: np.ndarray) -> np.ndarray:
    seg = np.hypot(*np.diff(poly, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return s / s[-1] if s[-1] > 0 else s


def chord_distance(poly: np.ndarray) -> np.ndarray:
    """Perpendicular distance of every vertex from the chord first -> last."""
    a, b = poly[0], poly[-1]
    d = b - a
    n = np.hypot(*d)
    if n == 0:
        return np.hypot(*(poly - a).T)
    return np.abs(d[0] * (poly[:, 1] - a[1]) - d[1] * (poly[:, 0] - a[0])) / n


def turn_angles(poly: np.ndarray) -> np.ndarray:
    """Turning angle (radians, 0 = straight) at every vertex; 0 at both ends."""
    out = np.zeros(len(poly))
    if len(poly) < 3:
        return out
    u = poly[1:-1] - poly[:-2]
    v = poly[2:] - poly[1:-1]
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    dot = (u * v).sum(1)
    out[1:-1] = np.abs(np.arctan2(cross, dot))
    return out


def _pick(values: np.ndarray, frac: np.ndarray, lo: float, hi: float) -> int | None:
    idx = np.flatnonzero((frac >= lo) & (frac <= hi))
    if idx.size == 0:
        return None
    return int(idx[np.argmax(values[idx])])


def vertex_by_chord(poly: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    """Vertex of greatest distance from the chord within [lo, hi] of the arc length."""
    if len(poly) < 2:
        return None
    i = _pick(chord_distance(poly), arc_fraction(poly), lo, hi)
    return None if i is None else poly[i]


def sharpest_turn(poly: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    if len(poly) < 3:
        return None
    i = _pick(turn_angles(poly), arc_fraction(poly), lo, hi)
    return None if i is None else poly[i]


def find_anchors(lines: dict[str, np.ndarray], prn: np.ndarray | None, px_per_mm: float,
                 chin_hint: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Anchors S, N, Me, ANS, Go, Pog (Prn comes from 0B) from the open class polylines.

    Returns (anchors, simplified polylines). ``prn`` orients the cranial base and the palatal
    plane (nose side); without it the image's left edge (the face side) is used. ``chin_hint``
    (e.g. soft-tissue pogonion) helps orient the mandibular border when Me is not found."""
    simplified = {c: simplify(p, DP_TOLERANCE_MM.get(c, 1.0) * px_per_mm) for c, p in lines.items()}
    nose = prn if prn is not None else np.array([0.0, 200.0])
    anchors: dict[str, np.ndarray] = {}

    cb = simplified.get("cranial_base")
    if cb is not None and len(cb) >= 2:
        cb = orient_towards(cb, nose)
        simplified["cranial_base"] = cb
        anchors["N"] = cb[-1]
        s = vertex_by_chord(cb, 0.2, 0.6)
        if s is None:   # too few vertices in the window: use the dense line
            dense = orient_towards(lines["cranial_base"], nose)
            s = vertex_by_chord(dense, 0.2, 0.6)
        if s is not None:
            anchors["S"] = s

    sy = simplified.get("mandibular_symphysis")
    if sy is not None and len(sy) >= 2:
        # chin bottom: the lowest point of the symphysis band (largest y)
        dense = lines["mandibular_symphysis"]
        bottom = dense[np.argmax(dense[:, 1])]
        sy = orient_towards(sy, bottom)
        simplified["mandibular_symphysis"] = sy
        anchors["Me"] = sy[-1]
        pog = vertex_by_chord(sy, 0.10, 0.65)
        if pog is None:
            pog = vertex_by_chord(orient_towards(dense, bottom), 0.10, 0.65)
        if pog is not None:
            anchors["Pog"] = pog

    pp = simplified.get("palatal_plane")
    if pp is not None and len(pp) >= 2:
        pp = orient_towards(pp, nose)
        simplified["palatal_plane"] = pp
        anchors["ANS"] = pp[-1]

    mb = simplified.get("mandibular_border")
    if mb is not None and len(mb) >= 2:
        chin = anchors.get("Me")
        if chin is None:
            chin = chin_hint if chin_hint is not None else np.array([0.0, 512.0])
        mb = orient_towards(mb, chin)
        simplified["mandibular_border"] = mb
        go = sharpest_turn(mb, 0.15, 0.50)
        if go is None:
            go = sharpest_turn(orient_towards(simplify(lines["mandibular_border"], 0.5 * px_per_mm), chin), 0.15, 0.50)
        if go is not None:
            anchors["Go"] = go
    return anchors, simplified
