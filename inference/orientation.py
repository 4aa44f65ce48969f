"""Orientation: bring any lateral cephalogram to the canonical pose and map points back.

Canonical pose (the CephTrace v4 training pose): face to the image's LEFT, upright, i.e.
DICOM Patient Orientation rows "P" (+x runs posterior), columns "F" (+y runs to the feet).

A pose is (k, flip): np.rot90(image, k) (counter-clockwise quarter turns), then, if flip,
mirror left-right. Only the 512 x 512 working image is ever turned (cheap); a resize to a
square commutes with these turns, so this equals turning the original and then resizing.
"""
from __future__ import annotations

import cv2
import numpy as np

CANONICAL = ("P", "F")
POSES: tuple[tuple[int, bool], ...] = tuple((k, f) for k in range(4) for f in (False, True))
_OPPOSITE = {"A": "P", "P": "A", "H": "F", "F": "H", "L": "R", "R": "L"}

# Mean 8 x 8 z-scored thumbnail of a lateral cephalogram in the canonical pose (ISBI 2015
# train split, 150 images, mirrored to face left; see template_features). The image is
# compared with it in all eight poses; on the ISBI test split in all eight poses and on the
# Bolton-Brush film it picks the right pose every time (tests/test_inference_orientation.py).
TEMPLATE_8x8 = np.array([
    [0.381, -0.511, -0.620, 0.544, 0.933, 1.224, 1.284, 1.079],
    [-0.508, -0.950, 0.484, 0.810, 1.098, 1.459, 1.466, 1.300],
    [-0.807, -0.867, 0.312, 0.700, 1.121, 1.407, 1.382, 1.168],
    [-1.082, -1.311, -0.367, 0.231, 0.776, 1.258, 1.323, 1.089],
    [-1.203, -1.366, -0.593, -0.325, 0.334, 0.992, 1.004, 0.503],
    [-1.224, -1.052, 0.122, 0.698, 0.350, -0.002, -0.017, -0.893],
    [-1.130, -1.096, -0.246, 0.096, -0.542, -0.870, -0.277, -1.082],
    [-0.930, -1.180, -1.169, -1.286, -1.351, -1.028, -0.301, -0.742],
], np.float32)


def to_canonical(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(img, k)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _rot_point(x, y, w, h):
    """One counter-clockwise quarter turn of an image w wide, h high (pixel centres at ints)."""
    return y, (w - 1) - x, h, w


def forward_points(xy: np.ndarray, width: int, height: int, k: int, flip: bool) -> np.ndarray:
    """Points in the original pose -> points in the pose (k, flip)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y, w, h = xy[..., 0], xy[..., 1], width, height
    for _ in range(k % 4):
        x, y, w, h = _rot_point(x, y, w, h)
    if flip:
        x = (w - 1) - x
    return np.stack([x, y], axis=-1)


def inverse_points(xy: np.ndarray, width: int, height: int, k: int, flip: bool) -> np.ndarray:
    """Points in the pose (k, flip) of an original image width x height -> original pose.

    width, height are the ORIGINAL image's dimensions.
    """
    xy = np.asarray(xy, dtype=np.float64)
    w, h = (height, width) if k % 2 else (width, height)   # dimensions in the turned pose
    x, y = xy[..., 0], xy[..., 1]
    if flip:
        x = (w - 1) - x
    for _ in range(k % 4):
        # inverse of one CCW quarter turn (image now w wide, h high): a clockwise turn
        x, y, w, h = (h - 1) - y, x, h, w
    return np.stack([x, y], axis=-1)


def _direction_after(v: tuple[int, int], k: int, flip: bool) -> tuple[int, int]:
    dx, dy = v
    for _ in range(k % 4):
        dx, dy = dy, -dx
    if flip:
        dx = -dx
    return dx, dy


def pose_from_patient_orientation(po: tuple[str, str] | None) -> tuple[int, bool] | None:
    """The pose that turns an image with this Patient Orientation into ("P", "F").

    Returns None when the pair does not describe a lateral projection (it needs one A/P and
    one H/F code; oblique codes such as "AF" use their first letter).
    """
    if not po or len(po) != 2:
        return None
    codes = [str(c).strip().upper()[:1] for c in po]
    if any(c not in _OPPOSITE for c in codes):
        return None
    if sorted(("AP" if c in "AP" else "HF" if c in "HF" else "LR") for c in codes) != ["AP", "HF"]:
        return None
    label = {(1, 0): codes[0], (-1, 0): _OPPOSITE[codes[0]], (0, 1): codes[1], (0, -1): _OPPOSITE[codes[1]]}
    for k, flip in POSES:
        new = {_direction_after(v, k, flip): lab for v, lab in label.items()}
        if new[(1, 0)] == CANONICAL[0] and new[(0, 1)] == CANONICAL[1]:
            return k, flip
    return None  # unreachable for a valid pair


def template_features(grey: np.ndarray) -> np.ndarray:
    """8 x 8 z-scored thumbnail of the central 84 % of an image (film borders and labels
    at the edge vary too much between devices to help)."""
    h, w = grey.shape[:2]
    mh, mw = int(0.08 * h), int(0.08 * w)
    core = grey[mh:h - mh, mw:w - mw]
    a = cv2.resize(np.asarray(core, np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    a = cv2.resize(a, (8, 8), interpolation=cv2.INTER_AREA)
    return (a - a.mean()) / (a.std() + 1e-6)


def detect_pose(grey: np.ndarray) -> tuple[tuple[int, bool], float]:
    """Pick the pose whose turned image best matches the canonical template.

    Returns ((k, flip), margin), margin = best score - second best (0..~1): small margins
    mean the image does not look like a lateral cephalogram in any pose.
    """
    f = template_features(grey)
    scores = []
    for k, flip in POSES:
        scores.append((float((to_canonical(f, k, flip) * TEMPLATE_8x8).mean()), (k, flip)))
    scores.sort(key=lambda s: s[0], reverse=True)
    return scores[0][1], scores[0][0] - scores[1][0]

