"""Coordinate conventions shared by every phase (and by training, which must match them).

Pixel centres sit at integer coordinates. Resizing an axis of n pixels to m pixels maps
a coordinate u to (u + 0.5) * m / n - 0.5, which is exactly what cv2.resize does to image
content, so a point keeps its anatomical place through any resize.
"""
from __future__ import annotations

import numpy as np

WORK = 512      # Stage 0 / Stage 1 input grid
HEAT = 256      # Stage 1 heatmap grid and Phase 0E attention grid


def rescale(u, n_from: float, n_to: float):
    """Map coordinate(s) u on an axis of n_from pixels to one of n_to pixels."""
    return (np.asarray(u, dtype=np.float64) + 0.5) * (n_to / n_from) - 0.5


def from_work(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) points on the 512 grid -> original-image pixels (same pose)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([rescale(xy[:, 0], WORK, width), rescale(xy[:, 1], WORK, height)], axis=1)


def heat_to_work(xy: np.ndarray) -> np.ndarray:
    return rescale(xy, HEAT, WORK)

