"""Phase 0C training data: contour labels in the zone crops.

Zone boxes and crops are inference's own (inference.profile.zone_boxes_from_mask,
inference.zones.zone_input): training sees exactly what the shipped nets will be given.

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


import cv2
import numpy as np

from cephnode.domain.landmarks import ISBI_19
from cephnode.inference.contract import ZONE1, ZONE2, ZONE3, ZONE4
from cephnode.inference.zones import zone_input

IX = {n: i for i, n in enumerate(ISBI_19)}
# The classes each zone net outputs, in channel order: the contract's.
ZONE_CLASSES: dict[str, tuple[str, ...]] = {spec.key: spec.classes for spec in (ZONE1, ZONE2, ZONE3, ZONE4)}
CONTOURS: dict[str, tuple[str, ...]] = {
    "cranial_base": ("Ar", "S", "N"),
    "mandibular_border": ("Ar", "Go", "Me"),
    "mandibular_symphysis": ("B", "Pog", "Gn", "Me"),
    "palatal_plane": ("PNS", "ANS"),
    "upper_incisor_axis": (),
    "lower_incisor_axis": (),
}
LINE_THICKNESS = 3  # px on the 256 crop: thin, so the band tip Phase 0D reads as an end point sits on the landmark


def crop_zone(img512: np.ndarray, box: tuple[int, int, int, int], zone: str) -> np.ndarray:
    """The zone net's input exactly as inference makes it (crop, the zone's CLAHE, bilinear to
    256), as float32 (256, 256) in [0, 1]."""
    return zone_input(img512, zone, box)[0, 0]


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
