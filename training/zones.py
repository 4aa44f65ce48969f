"""Phase 0C training data: zone boxes as the contract computes them, crops, and contour labels.

Contour labels are thick polylines through annotated landmarks (canonical 512 frame, face left),
ordered so that the contract's Phase 0D anchor rules recover the landmarks:
  cranial_base        Ar -> S -> N        N = end nearest the nose; S = greatest chord distance
                                          (S sits at ~1/3 of the arc, inside 20-60 %)
  mandibular_border   Ar -> Go -> Me      Go = the one sharp turn (~40 % of the arc, inside 15-50 %)
  mandibular_symphysis B -> Pog -> Gn -> Me  Me = end nearest the chin bottom; Pog = greatest
                                          chord distance from the B-Me chord
  palatal_plane       PNS -> ANS          ANS = end nearest the nose
  upper/lower_incisor_axis: no labels (root apices are not annotated): trained to be EMPTY.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cephnode.inference.landmarks import ISBI_19

IX = {n: i for i, n in enumerate(ISBI_19)}
PAD = 51
MIN_SIDE = 128
Z1_BOX = (77, 0, 512, 486)
Z4_BOX = (25, 0, 512, 486)
FALLBACK = {"z2": (0, 0, 384, 307), "z3": (0, 153, 512, 512), "z5": (0, 10, 230, 501)}
CLAHE = {"z1": (3.0, 4), "z2": (2.5, 8), "z3": (3.0, 6), "z4": (3.5, 4), "z5": (1.5, 8)}
CONTOURS: dict[str, tuple[str, ...]] = {
    "cranial_base": ("Ar", "S", "N"),
    "mandibular_border": ("Ar", "Go", "Me"),
    "mandibular_symphysis": ("B", "Pog", "Gn", "Me"),
    "palatal_plane": ("PNS", "ANS"),
    "upper_incisor_axis": (),
    "lower_incisor_axis": (),
}
ZONE_CLASSES = {
    "z1": ("cranial_base",),
    "z2": ("palatal_plane", "upper_incisor_axis"),
    "z3": ("mandibular_border", "mandibular_symphysis", "lower_incisor_axis"),
    "z4": ("mandibular_border", "cranial_base"),
}
LINE_THICKNESS = 3  # px on the 256 crop: thin, so the band tip Phase 0D reads as an end point sits on the landmark


def _clamp_box(x1: float, y1: float, x2: float, y2: float, size: int = 512) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(max(0, x1)), int(max(0, y1)), int(min(size, x2)), int(min(size, y2)))
    # minimum side: grow around the centre, then clamp again
    for lo, hi in ((0, 2), (1, 3)):
        b = [x1, y1, x2, y2]
        if b[hi] - b[lo] < MIN_SIDE:
            c = (b[hi] + b[lo]) / 2
            b[lo], b[hi] = int(max(0, c - MIN_SIDE / 2)), int(min(size, c + MIN_SIDE / 2))
            if b[hi] - b[lo] < MIN_SIDE:
                b[lo], b[hi] = (0, MIN_SIDE) if b[lo] == 0 else (size - MIN_SIDE, size)
        x1, y1, x2, y2 = b
    return x1, y1, x2, y2


def zone_boxes(profile_mask: np.ndarray | None) -> dict[str, tuple[int, int, int, int]]:
    """The contract's five zone boxes at 512 from the Phase 0A mask (fallbacks when it failed)."""
    boxes = {"z1": Z1_BOX, "z4": Z4_BOX}
    if profile_mask is None or int(profile_mask.sum()) < 50:
        boxes.update(FALLBACK)
        return boxes
    ys, xs = np.nonzero(profile_mask)
    x_min, y_min, x_max, y_max = xs.min(), ys.min(), xs.max(), ys.max()
    cy = ys.mean()
    ysc = int(0.95 * cy)
    xa = int(x_max + 0.25 * (512 - x_max))
    boxes["z2"] = _clamp_box(0, 0, xa + 3 * PAD, ysc + 4 * PAD)
    boxes["z3"] = _clamp_box(0, ysc - 4 * PAD, 512, 512)
    boxes["z5"] = _clamp_box(x_min - 4 * PAD, y_min - 3 * PAD, x_max + 4 * PAD, y_max + 3 * PAD)
    return boxes


def crop_zone(img512: np.ndarray, box: tuple[int, int, int, int], zone: str) -> np.ndarray:
    """Crop, CLAHE with the zone's settings, resize to 256 (bilinear): uint8 (256,256)."""
    x1, y1, x2, y2 = box
    crop = np.ascontiguousarray(img512[y1:y2, x1:x2])
    clip, tiles = CLAHE[zone]
    crop = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(crop)
    return cv2.resize(crop, (256, 256), interpolation=cv2.INTER_LINEAR)


def to_crop(points512: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    p = np.asarray(points512, dtype=np.float64).copy()
    p[..., 0] = (p[..., 0] - x1 + 0.5) * 256.0 / (x2 - x1) - 0.5
    p[..., 1] = (p[..., 1] - y1 + 0.5) * 256.0 / (y2 - y1) - 0.5
    return p


def contour_label(lm19_512: np.ndarray, box: tuple[int, int, int, int], zone: str) -> np.ndarray:
    """(n_classes,256,256) uint8 {0,1}: the zone's classes as thick polylines in the crop."""
    classes = ZONE_CLASSES[zone]
    out = np.zeros((len(classes), 256, 256), np.uint8)
    for c, cls in enumerate(classes):
        names = CONTOURS[cls]
        if not names:
            continue
        pts = _pull_in_ends(to_crop(np.stack([lm19_512[IX[n]] for n in names]), box), LINE_THICKNESS / 2.0 + 0.5)
        # fixed-point (4 fractional bits) so the line sits on sub-pixel positions
        ip = np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out[c], [ip], False, 1, LINE_THICKNESS, cv2.LINE_8, shift=4)
    return out


def _pull_in_ends(pts: np.ndarray, r: float) -> np.ndarray:
    """Move both end points toward the other end by r. Phase 0D reads end landmarks (N, Me,
    ANS) at the band's extreme tip, the contour point farthest from the other end; a thick
    line's round cap, plus the half pixel a nearest-neighbour upsample adds outside, put that
    tip about r beyond the end point, away from the other end."""
    p = pts.copy()
    d = p[-1] - p[0]
    n = float(np.hypot(*d))
    if n > 4 * r:
        p[0] = p[0] + d / n * r
        p[-1] = p[-1] - d / n * r
    return p
