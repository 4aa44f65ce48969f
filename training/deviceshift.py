"""Device shift: make an ISBI film look as if another machine had taken it, deterministically.

Other devices differ from the ISBI one in exposure and processing (intensity curve, contrast,
inverted polarity without a MONOCHROME1 tag, blur or edge enhancement, noise), in resolution
(0.1-0.2 mm per pixel), in the field (cropped tighter, padded, collimator borders) and in what
is burnt into the film (labels, rulers). Each `Shift` names one such combination; `apply`
turns (image, points, spacing) into the shifted image with the points and the pixel spacing
that still hold, so a tracing of the shifted film can be scored in true millimetres.

Used by bench/bench_pose.py and bench/bench_quality.py (is the pose still right, what does the
quality gate say), by tests, and by training.augment.device_shift (the same transforms at
random for training). Everything is a pure function of its arguments: the same Shift and seed
give the same pixels on every machine (OpenCV's resize and blur are deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np


@dataclass(frozen=True)
class Shift:
    name: str
    gamma: float = 1.0            # intensity curve x ** gamma on [0, 1]
    contrast: float = 1.0         # about mid-grey, after the gamma
    brightness: float = 0.0
    invert: bool = False          # negative polarity, as a MONOCHROME1 film read without the tag
    blur_sigma: float = 0.0       # Gaussian blur (output pixels)
    sharpen: float = 0.0          # unsharp-mask amount (edge enhancement of some processing)
    noise_sd: float = 0.0         # Gaussian noise, share of full scale
    spacing_mm: float = 0.2       # output pixel size (ISBI stored images: 0.2 mm)
    # Field: share of each side (top, bottom, left, right) cut off (> 0) or padded (< 0).
    field: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    pad_value: int = 0
    collimation: float = 0.0      # width of bright collimator bands on every side (share of size)
    labels: bool = False          # burnt-in text labels and a ruler with tick marks

    def with_(self, **kw) -> "Shift":
        return replace(self, **kw)


# The named device profiles the benchmarks use. Every one keeps the whole skull in view, so a
# correct tracing exists; "degraded" is deliberately beyond what a device produces.
PRESETS: tuple[Shift, ...] = (
    Shift("dark_gamma", gamma=1.8, contrast=1.1),
    Shift("flat_bright", gamma=0.6, contrast=0.7, brightness=0.08),
    Shift("inverted", invert=True),
    Shift("blur_lowres", blur_sigma=1.5, spacing_mm=0.2, noise_sd=0.01),
    Shift("sharp_hires", sharpen=1.2, spacing_mm=0.1, noise_sd=0.02),
    Shift("cropped_013", spacing_mm=0.13, field=(0.06, 0.08, 0.10, 0.04)),
    Shift("padded_collimated", spacing_mm=0.15, field=(-0.08, -0.05, -0.12, -0.06), pad_value=0,
          collimation=0.05),
    Shift("labels_ruler", labels=True, gamma=1.2, spacing_mm=0.16, field=(0.0, 0.0, -0.05, 0.0),
          pad_value=255),
)
DEGRADED = Shift("degraded", blur_sigma=4.0, noise_sd=0.12, contrast=0.35, gamma=1.5)


def _intensity(x: np.ndarray, s: Shift, rng: np.random.Generator) -> np.ndarray:
    """float32 [0, 1] in, float32 [0, 1] out."""
    if s.gamma != 1.0:
        x = np.power(x, s.gamma, dtype=np.float32)
    if s.contrast != 1.0 or s.brightness:
        x = (x - 0.5) * s.contrast + 0.5 + s.brightness
    if s.blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), s.blur_sigma)
    if s.sharpen > 0:
        x = x + s.sharpen * (x - cv2.GaussianBlur(x, (0, 0), 2.0))
    if s.noise_sd > 0:
        x = x + rng.normal(0.0, s.noise_sd, x.shape).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    return 1.0 - x if s.invert else x


def _burn_labels(img: np.ndarray, rng: np.random.Generator) -> None:
    """White text blocks near the corners and a ruler along one edge, as films carry them."""
    h, w = img.shape
    scale = max(h, w) / 1200.0
    for (fx, fy), text in zip(((0.04, 0.06), (0.62, 0.95)), ("R  72kV 12mAs", "CEPH LAT 2026-03-14")):
        org = (int(fx * w + rng.integers(0, int(0.04 * w) + 1)), int(fy * h))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, 255, max(1, int(2 * scale)), cv2.LINE_AA)
    # a radiopaque ruler: a bar with a tick every 10 px-ish, near the lower-left corner
    x0, y0 = int(0.05 * w), int(0.80 * h)
    length, thick = int(0.25 * h), max(2, int(6 * scale))
    cv2.rectangle(img, (x0, y0 - length), (x0 + thick, y0), 230, -1)
    for i, y in enumerate(range(y0 - length, y0 + 1, max(4, int(12 * scale)))):
        tick = thick * (3 if i % 5 == 0 else 2)
        cv2.line(img, (x0, y), (x0 + tick, y), 255, max(1, int(scale)))


def apply(image: np.ndarray, points: np.ndarray | None, spacing_mm: tuple[float, float],
          shift: Shift, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """uint8 grey image, (..., 2) x, y points (may be None), (row, column) spacing ->
    the shifted uint8 image, the points on it and its (row, column) spacing."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError("deviceshift.apply expects a uint8 grey image")
    pts = None if points is None else np.asarray(points, np.float64).copy()
    row_mm, col_mm = spacing_mm
    # resolution: resample to the target pixel size (pixel centres follow cv2's half-pixel map)
    sx, sy = col_mm / shift.spacing_mm, row_mm / shift.spacing_mm
    if abs(sx - 1) > 1e-3 or abs(sy - 1) > 1e-3:
        h, w = img.shape
        nw, nh = int(round(w * sx)), int(round(h * sy))
        interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
        sx, sy = nw / w, nh / h
        if pts is not None:
            pts[..., 0] = (pts[..., 0] + 0.5) * sx - 0.5
            pts[..., 1] = (pts[..., 1] + 0.5) * sy - 0.5
        row_mm, col_mm = row_mm / sy, col_mm / sx
    # field: crop (positive shares) or pad (negative shares)
    h, w = img.shape
    top, bottom, left, right = (int(round(f * n)) for f, n in zip(shift.field, (h, h, w, w)))
    pad = [max(0, -v) for v in (top, bottom, left, right)]
    if any(pad):
        img = cv2.copyMakeBorder(img, *pad, cv2.BORDER_CONSTANT, value=int(shift.pad_value))
        if pts is not None:
            pts[..., 0] += pad[2]
            pts[..., 1] += pad[0]
    h, w = img.shape
    cut = [max(0, v) for v in (top, bottom, left, right)]
    if any(cut):
        img = img[cut[0]:h - cut[1], cut[2]:w - cut[3]]
        if pts is not None:
            pts[..., 0] -= cut[2]
            pts[..., 1] -= cut[0]
    x = _intensity(img.astype(np.float32) / 255.0, shift, rng)
    out = np.round(x * 255.0).astype(np.uint8)
    if shift.collimation > 0:
        h, w = out.shape
        bh, bw = int(shift.collimation * h), int(shift.collimation * w)
        bright = 0 if shift.invert else 245          # the collimator blocks the beam
        out[:bh], out[h - bh:], out[:, :bw], out[:, w - bw:] = bright, bright, bright, bright
    if shift.labels:
        _burn_labels(out, rng)
    return out, pts, (row_mm, col_mm)


def random_shift(rng: np.random.Generator) -> Shift:
    """A random device profile in the ranges PRESETS span (for training augmentation)."""
    crop = rng.uniform(-0.08, 0.08, 4) * (rng.random(4) < 0.5)
    return Shift(
        "random",
        gamma=float(np.exp(rng.uniform(np.log(0.6), np.log(1.8)))),
        contrast=float(rng.uniform(0.7, 1.2)),
        brightness=float(rng.uniform(-0.08, 0.08)),
        invert=bool(rng.random() < 0.15),
        blur_sigma=float(rng.uniform(0.5, 1.5)) if rng.random() < 0.3 else 0.0,
        sharpen=float(rng.uniform(0.3, 1.2)) if rng.random() < 0.3 else 0.0,
        noise_sd=float(rng.uniform(0.0, 0.025)),
        spacing_mm=float(rng.uniform(0.1, 0.2)),
        field=tuple(float(v) for v in crop),
        pad_value=int(rng.choice([0, 255])),
        collimation=float(rng.uniform(0.02, 0.06)) if rng.random() < 0.3 else 0.0,
        labels=bool(rng.random() < 0.3),
    )
