"""Gaussian maps on the 256 grid: Stage 1 targets and Phase 0E-style attention priors.

Coordinates: pixel centres in the 512 frame; the 256 grid's pixel centres map as
x256 = (x512 + 0.5) / 2 - 0.5 (the same convention as a bilinear resize).
"""
from __future__ import annotations

import numpy as np

GRID = 256


def to_grid(points512: np.ndarray) -> np.ndarray:
    return (np.asarray(points512, dtype=np.float64) + 0.5) / 2.0 - 0.5


def from_grid(points256: np.ndarray) -> np.ndarray:
    return (np.asarray(points256, dtype=np.float64) + 0.5) * 2.0 - 0.5


def gaussians(points256: np.ndarray, sigmas: np.ndarray, present: np.ndarray, size: int = GRID) -> np.ndarray:
    """(K,2) points, (K,) sigmas, (K,) bool -> (K,size,size) float32, peak 1; absent -> zeros.

    Separable: exp(-(dx^2+dy^2)/2s^2) = gx(x) * gy(y), one outer product per channel.
    """
    ax = np.arange(size, dtype=np.float32)
    p = np.asarray(points256, dtype=np.float32)
    s = np.asarray(sigmas, dtype=np.float32)[:, None]
    gx = np.exp(-((ax[None, :] - p[:, 0:1]) ** 2) / (2 * s * s))
    gy = np.exp(-((ax[None, :] - p[:, 1:2]) ** 2) / (2 * s * s))
    out = gy[:, :, None] * gx[:, None, :]
    out[~np.asarray(present, bool)] = 0.0
    return out
