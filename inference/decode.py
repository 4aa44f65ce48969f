"""Stage 1 heatmap decoding: argmax refined by DARK (Zhang et al., CVPR 2020), all channels at once.

DARK treats the log of the (Gaussian-smoothed) heatmap near its peak as a quadratic and takes
one Newton step: offset = -H^-1 g, with gradient g and Hessian H from finite differences. We
smooth only a small patch around each peak (the Taylor step needs just the 3 x 3 centre), so
the cost does not depend on the heatmap size.
"""
from __future__ import annotations

import numpy as np

PATCH = 4                 # patch half-size: (2*PATCH+1)^2 values gathered per channel
SMOOTH_SIGMA = 1.0        # smoothing applied before the log (DARK's distribution modulation)
EPS = 1e-10


def _kernel(sigma: float, radius: int) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


_K = _kernel(SMOOTH_SIGMA, PATCH - 1)     # 7 taps: smoothing the 9x9 patch yields its 3x3 centre


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, H, W) heatmaps -> ((K, 2) sub-pixel (x, y) on the heatmap grid, (K,) peak values)."""
    hm = np.asarray(heatmaps, dtype=np.float32)
    k, h, w = hm.shape
    flat = hm.reshape(k, -1)
    idx = flat.argmax(axis=1)
    peaks = flat[np.arange(k), idx].astype(np.float64)
    py, px = np.divmod(idx, w)

    # Gather (K, 9, 9) patches around the peaks, edge-clamped.
    off = np.arange(-PATCH, PATCH + 1)
    rows = np.clip(py[:, None] + off[None, :], 0, h - 1)
    cols = np.clip(px[:, None] + off[None, :], 0, w - 1)
    patch = hm[np.arange(k)[:, None, None], rows[:, :, None], cols[:, None, :]].astype(np.float64)
    patch = np.maximum(patch, EPS)
    # Separable smoothing, 'valid' region: (K, 9, 9) -> (K, 3, 3)
    r = len(_K)
    sm = sum(_K[i] * patch[:, i:i + 3, :] for i in range(r))
    sm = sum(_K[i] * sm[:, :, i:i + 3] for i in range(r))
    L = np.log(np.maximum(sm, EPS))

    dx = 0.5 * (L[:, 1, 2] - L[:, 1, 0])
    dy = 0.5 * (L[:, 2, 1] - L[:, 0, 1])
    dxx = L[:, 1, 2] - 2 * L[:, 1, 1] + L[:, 1, 0]
    dyy = L[:, 2, 1] - 2 * L[:, 1, 1] + L[:, 0, 1]
    dxy = 0.25 * (L[:, 2, 2] - L[:, 2, 0] - L[:, 0, 2] + L[:, 0, 0])
    det = dxx * dyy - dxy * dxy
    # A maximum has a negative-definite Hessian; otherwise keep the integer peak.
    ok = (det > 1e-12) & (dxx < 0) & np.isfinite(det)
    safe = np.where(ok, det, 1.0)
    ox = np.where(ok, -(dyy * dx - dxy * dy) / safe, 0.0)
    oy = np.where(ok, -(dxx * dy - dxy * dx) / safe, 0.0)
    # Peaks on the border have a one-sided neighbourhood: no refinement there.
    interior = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    ox = np.where(interior, np.clip(ox, -0.5, 0.5), 0.0)
    oy = np.where(interior, np.clip(oy, -0.5, 0.5), 0.0)
    xy = np.stack([px + ox, py + oy], axis=1)
    return xy, peaks
