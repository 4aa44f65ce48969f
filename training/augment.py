"""Augmentation for radiographs: geometry that moves the landmarks with the pixels, and intensity.

Geometry: small rotation and scale about the image centre, small shift, optional horizontal flip.
A flip turns a face-left image into a face-right one, so it is only used where the network
must handle both orientations (the profile net, which the pipeline may use to detect the
orientation); flipped landmark coordinates are x' = (W - 1) - x (pixel centres).
Intensity: contrast/brightness, gamma, Gaussian noise, occasional blur (exposure and detector
differences between devices), never anything that moves structures.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class GeometryParams:
    max_rotation_deg: float = 8.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift_frac: float = 0.04
    flip_prob: float = 0.0


def random_affine(rng: np.random.Generator, size: int, p: GeometryParams) -> tuple[np.ndarray, bool]:
    """A 2x3 matrix mapping source pixel centres to output pixel centres, and whether to flip."""
    angle = rng.uniform(-p.max_rotation_deg, p.max_rotation_deg)
    scale = rng.uniform(*p.scale_range)
    c = (size - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    m[:, 2] += rng.uniform(-p.max_shift_frac, p.max_shift_frac, 2) * size
    flip = bool(rng.random() < p.flip_prob)
    if flip:
        f = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = (f @ np.vstack([m, [0, 0, 1]]))[:2]
    return m, flip


def warp_image(img: np.ndarray, m: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def intensity(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0,1] with random contrast, brightness, gamma, noise, blur."""
    x = img.astype(np.float32) / 255.0
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.2))
    x = (x - 0.5) * rng.uniform(0.75, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.5:
        x = x + rng.normal(0.0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def device_shift(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """uint8 (512, 512) canonical image -> float32 [0, 1] as another device might show it:
    training.deviceshift's transforms at random (intensity curve, contrast, blur or edge
    enhancement, noise, a coarser detector, collimator bands, burnt-in labels). Geometry
    (scale, shift, crop) stays with random_affine, so the landmarks need no change here;
    polarity is left alone because the pipeline finds it (inference.pipeline)."""
    from cephnode.training import deviceshift

    s = deviceshift.random_shift(rng).with_(invert=False, field=(0.0, 0.0, 0.0, 0.0), spacing_mm=0.2)
    img = np.asarray(img, np.uint8)
    if rng.random() < 0.5:
        # a detector of coarser pixels: down to 50-90 % and back, the detail it would lose
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, img.shape[::-1], interpolation=cv2.INTER_LINEAR)
    out, _, _ = deviceshift.apply(img, None, (0.2, 0.2), s, seed=int(rng.integers(2 ** 31)))
    return out.astype(np.float32) / 255.0
