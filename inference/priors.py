"""Phase 0E: anchor vector for the MLP, and the 25 Gaussian attention maps.

A Gaussian is separable, and bilinear upsampling is separable and linear, so the 512 x 512
map of each landmark is the outer product of two upsampled 1-D Gaussians (all 25 computed at
once), written straight into the Stage 1 input buffer: no 256-grid image, no resize, and no
Python loop over pixels.
"""
from __future__ import annotations

import numpy as np

from cephnode.inference.geometry import HEAT, WORK, rescale
from cephnode.inference.landmarks import ANCHOR_ORDER, CANONICAL_25, DERIVED_ORDER, PRIOR_SIGMA_256

SIGMAS_256 = np.array([PRIOR_SIGMA_256[n] for n in CANONICAL_25], dtype=np.float64)

# Bilinear 256 -> 512 upsampling of one axis (half-pixel centres, edge clamped: what
# cv2.resize INTER_LINEAR does): every 512 sample mixes two 256 samples.
def _upsample_taps(n_from: int = HEAT, n_to: int = WORK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.clip(rescale(np.arange(n_to), n_to, n_from), 0, n_from - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_from - 1)
    return i0, i1, (src - i0)


_I0, _I1, _W1 = _upsample_taps()


def upsample_1d(g: np.ndarray) -> np.ndarray:
    """(K, 256) -> (K, 512) bilinear."""
    return g[:, _I0] * (1.0 - _W1) + g[:, _I1] * _W1


def anchor_vector(anchors_work: dict[str, np.ndarray]) -> np.ndarray:
    """(1, 14) float32: anchors as (x/W, y/H) on the 512 grid in ANCHOR_ORDER; (0.5, 0.5) if missing."""
    v = np.full((1, 14), 0.5, np.float32)
    for i, name in enumerate(ANCHOR_ORDER):
        p = anchors_work.get(name)
        if p is not None:
            v[0, 2 * i] = p[0] / WORK
            v[0, 2 * i + 1] = p[1] / WORK
    return v


def derived_points(mlp_out: np.ndarray) -> dict[str, np.ndarray]:
    """(1, 36) MLP output -> {name: (x, y) on the 512 grid}."""
    o = np.asarray(mlp_out, np.float64).reshape(-1)
    return {n: np.array([o[2 * i] * WORK, o[2 * i + 1] * WORK]) for i, n in enumerate(DERIVED_ORDER)}


def gaussians_1d(centres_256: np.ndarray, sigmas: np.ndarray, n: int = HEAT) -> np.ndarray:
    """(K,) centres and sigmas -> (K, n) 1-D Gaussians with peak 1 at the centre."""
    g = np.arange(n, dtype=np.float64)[None, :]
    return np.exp(-0.5 * ((g - centres_256[:, None]) / sigmas[:, None]) ** 2)


def attention_maps(points_work: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(25, 2) points on the 512 grid (NaN = no position) -> (25, 512, 512) float32 maps.

    Each map is the Gaussian drawn on the 256 grid with the landmark's sigma, upsampled
    bilinearly to 512; a landmark without a position gets an all-zero channel."""
    pts = np.asarray(points_work, np.float64)
    if out is None:
        out = np.empty((len(pts), WORK, WORK), np.float32)
    have = np.isfinite(pts).all(axis=1)
    c256 = rescale(np.where(have[:, None], pts, 0.0), WORK, HEAT)
    gx = upsample_1d(gaussians_1d(c256[:, 0], SIGMAS_256)).astype(np.float32)   # (25, 512)
    gy = upsample_1d(gaussians_1d(c256[:, 1], SIGMAS_256)).astype(np.float32)
    gx[~have] = 0.0
    # Flush the far tails to zero: products of two tiny float32 values are denormals, which
    # make both this multiply and Stage 1's first convolution many times slower on x86.
    gx[gx < 1e-6] = 0.0
    gy[gy < 1e-6] = 0.0
    # Zero everything once, then write each map's non-zero box only: small sigmas cover a
    # small part of the grid. The loop runs over the 25 landmarks, never over pixels.
    out.fill(0.0)
    for i in range(len(pts)):
        xs = np.flatnonzero(gx[i])
        ys = np.flatnonzero(gy[i])
        if xs.size and ys.size:
            x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
            np.multiply(gy[i, y0:y1, None], gx[i, None, x0:x1], out=out[i, y0:y1, x0:x1])
    return out
