"""Phase 0C: zone crops through the four contour U-Nets, back to contours on the 512 grid."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from cephnode.inference import contract
from cephnode.inference.profile import CLAHE

ZONE_SPECS = {"z1": contract.ZONE1, "z2": contract.ZONE2, "z3": contract.ZONE3, "z4": contract.ZONE4}
PRIMARY = ("cranial_base", "mandibular_border", "palatal_plane", "mandibular_symphysis")
ALL_CLASSES = ("cranial_base", "mandibular_border", "palatal_plane", "mandibular_symphysis",
               "upper_incisor_axis", "lower_incisor_axis")
# Merge rule: the first zone that found the class wins.
SOURCES = {
    "cranial_base": ("z1", "z4"),
    "mandibular_border": ("z3", "z4"),
    "palatal_plane": ("z2",),
    "upper_incisor_axis": ("z2",),
    "mandibular_symphysis": ("z3",),
    "lower_incisor_axis": ("z3",),
}
_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def zone_input(grey_u8: np.ndarray, zone: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop, CLAHE, resize to 256: the (1, 1, 256, 256) float32 input of a zone net."""
    x1, y1, x2, y2 = box
    crop = np.ascontiguousarray(grey_u8[y1:y2, x1:x2])
    # A fresh CLAHE object per call: cheap, and cv2 objects are not documented thread-safe.
    enhanced = cv2.createCLAHE(clipLimit=CLAHE[zone][0], tileGridSize=(CLAHE[zone][1],) * 2).apply(crop)
    small = cv2.resize(enhanced, (contract.ZONE_INPUT, contract.ZONE_INPUT), interpolation=cv2.INTER_LINEAR)
    return (small.astype(np.float32) * (1.0 / 255.0))[None, None]


def longest_contour(mask: np.ndarray) -> np.ndarray | None:
    """Close then open (3x3 ellipse), then the longest external contour as (N, 2) float."""
    m = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _KERNEL)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _KERNEL)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    # CHAIN_APPROX_NONE lists every boundary pixel, so the point count is nearly the length:
    # measure arc length only for the few contours that can still win.
    most = max(len(c) for c in contours)
    best = max((c for c in contours if len(c) >= 0.7 * most), key=lambda c: cv2.arcLength(c, True))
    if len(best) < 3:
        return None
    return best.reshape(-1, 2).astype(np.float64)


def zone_contours(logits: np.ndarray, zone: str, box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Net output (1, C, 256, 256) logits -> {class: closed contour (N, 2) on the 512 grid}."""
    x1, y1, x2, y2 = box
    out: dict[str, np.ndarray] = {}
    masks = (logits[0] > 0.0).astype(np.uint8)          # sigmoid > 0.5  <=>  logit > 0
    for c, cls in enumerate(ZONE_SPECS[zone].classes):
        m = cv2.resize(masks[c], (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
        contour = longest_contour(m)
        if contour is not None:
            contour += (x1, y1)
            out[cls] = contour
    return out


def run_zones(grey: np.ndarray, boxes: dict[str, tuple[int, int, int, int]],
              run_model: Callable[[str, np.ndarray], np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All four zone nets; returns merged contours per class and which zone each came from."""
    grey_u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    per_zone = {z: zone_contours(run_model(ZONE_SPECS[z].key, zone_input(grey_u8, z, boxes[z])), z, boxes[z])
                for z in ("z1", "z2", "z3", "z4")}
    merged: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for cls, zones in SOURCES.items():
        for z in zones:
            if cls in per_zone[z]:
                merged[cls] = per_zone[z][cls]
                source[cls] = z
                break
    return merged, source


def band_midline(contour: np.ndarray, samples: int = 96) -> np.ndarray:
    """Open polyline through a thin band given by its closed outer contour.

    The two extreme ends of the band are the contour points farthest apart (found in two
    passes); the two arcs between them run along either side of the band, and their mean,
    resampled by arc length, is the midline. A closed contour has no ends of its own, and the
    0D anchor rules need an oriented open curve."""
    pts = contour
    if len(pts) < 4:
        return pts.copy()
    i0 = int(np.argmax(((pts - pts.mean(0)) ** 2).sum(1)))
    i1 = int(np.argmax(((pts - pts[i0]) ** 2).sum(1)))
    i0 = int(np.argmax(((pts - pts[i1]) ** 2).sum(1)))
    a, b = sorted((i0, i1))
    arc1 = pts[a:b + 1]
    arc2 = np.concatenate([pts[b:], pts[:a + 1]])[::-1]
    if len(arc1) < 2 or len(arc2) < 2:
        return pts[[a, b]]
    return 0.5 * (resample(arc1, samples) + resample(arc2, samples))


def resample(poly: np.ndarray, n: int) -> np.ndarray:
    seg = np.sqrt((np.diff(poly, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return np.repeat(poly[:1], n, axis=0)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, poly[:, 0]), np.interp(t, s, poly[:, 1])], axis=1)
