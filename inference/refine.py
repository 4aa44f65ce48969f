"""Landmark refinement at twice Stage 1's resolution (optional pack model, beyond the contract).

Stage 1 sees the film on a 512 x 512 grid and answers on a 256 x 256 heatmap: on a 2000 x 2500
film one heatmap pixel is about 8 x 10 source pixels. The refiner looks again at each
predicted landmark through a small patch of a 1024 x 1024 grid of the same canonical-pose film
(face to the left, as Stage 1 sees it) and answers with a heatmap for that landmark inside the
patch. The grid is relative to the film, like Stage 1's, so the refiner sees every device's
film at the scale Stage 1 does; scale differences between devices are trained in.

Each patch is standardised (zero mean, unit deviation) on its own: the refiner judges local
shape, not the exposure of the film, which is what differs most between devices.

The model: input (N, 1, PATCH, PATCH) float32, output (N, K, PATCH/2, PATCH/2) heatmaps with one
channel per refined landmark (pack.json "refinement": {"landmarks": [...]}) ; patch i is read
from the channel of its own landmark.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cephnode.inference.decode import decode_heatmaps
from cephnode.inference.geometry import rescale
from cephnode.inference.imageio import Normalised, apply_pose

GRID = 1024            # refinement grid (Stage 1 input: 512)
PATCH = 64             # patch side on the grid
OUT = PATCH // 2       # heatmap side: one heatmap pixel = 2 grid pixels
EPS = 1e-6


def grid_image(n: Normalised, pose: tuple[int, bool], inverted: bool = False) -> np.ndarray:
    """The film on the GRID x GRID grid in canonical pose, float32 in [0, 1].

    Resizing before turning is exact here because the grid is square: each source axis maps
    onto a GRID-pixel axis whichever way it ends up. Area averaging where the film is larger
    than the grid keeps high-resolution films free of aliasing."""
    img = n.pixels
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if (w > GRID or h > GRID) else cv2.INTER_LINEAR
    g = cv2.resize(img, (GRID, GRID), interpolation=interp)
    if g.ndim == 3:
        g = cv2.cvtColor(g.astype(np.float32), cv2.COLOR_RGB2GRAY)
    g = apply_pose(g, *pose).astype(np.float32)
    g -= n.lo
    g *= 1.0 / (n.hi - n.lo)
    np.clip(g, 0.0, 1.0, out=g)
    if inverted:
        g = 1.0 - g
    return g


def patch_matrix(centre: np.ndarray, scale: float = 1.0, angle_deg: float = 0.0) -> np.ndarray:
    """2x3 affine from patch pixels to grid pixels: the patch centre ((PATCH-1)/2) lands on
    `centre`, one patch pixel spans `scale` grid pixels, turned by `angle_deg`."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    half = (PATCH - 1) / 2.0
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = np.asarray(centre, np.float64) - m[:, :2] @ np.array([half, half])
    return m


def warp_patch(grid: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The PATCH x PATCH patch that patch_matrix `m` places on the grid (border: replicate)."""
    return cv2.warpAffine(grid, m, (PATCH, PATCH), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def read_patch(grid: np.ndarray, m: np.ndarray) -> np.ndarray:
    """warp_patch, standardised: what the refiner is given."""
    return standardise(warp_patch(grid, m))


def standardise(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float32, copy=False)
    return (p - p.mean()) / (p.std() + 0.02)


def heat_to_patch(xy: np.ndarray) -> np.ndarray:
    """Heatmap coordinates -> patch pixel coordinates."""
    return rescale(xy, OUT, PATCH)


def patch_to_grid(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return np.asarray(xy, np.float64) @ m[:, :2].T + m[:, 2]


@dataclass
class Refined:
    points: np.ndarray       # (K, 2) 512-grid points after refinement (NaN kept NaN)
    peaks: np.ndarray        # (K,) the refiner's peak values (0 where not refined)
    used: np.ndarray         # (K,) bool: the refined position replaced Stage 1's


def refine(run, grid: np.ndarray, points_512: np.ndarray, channels: np.ndarray, *,
           min_peak: float, max_move_px: float) -> Refined:
    """Refine the 512-grid `points_512` (K, 2) whose refiner channel is `channels` (K,) (-1: not
    refined). `run` maps a (N, 1, PATCH, PATCH) batch to (N, C, OUT, OUT) heatmaps. A refined
    position is kept only when its peak reaches `min_peak` and it lies within `max_move_px`
    grid pixels of Stage 1's (the patch saw the landmark; otherwise Stage 1's stands)."""
    pts = np.asarray(points_512, np.float64)
    out = pts.copy()
    peaks = np.zeros(len(pts))
    used = np.zeros(len(pts), bool)
    todo = np.flatnonzero((np.asarray(channels) >= 0) & np.isfinite(pts).all(axis=1))
    if len(todo) == 0:
        return Refined(out, peaks, used)
    centres = rescale(pts[todo], 512, GRID)
    mats = [patch_matrix(c) for c in centres]
    x = np.stack([read_patch(grid, m) for m in mats])[:, None]
    heat = run(x)
    own = heat[np.arange(len(todo)), np.asarray(channels)[todo]]
    xy, pk = decode_heatmaps(own)
    for j, i in enumerate(todo):
        g = patch_to_grid(mats[j], heat_to_patch(xy[j]))
        peaks[i] = pk[j]
        if pk[j] >= min_peak and np.hypot(*(g - centres[j])) <= max_move_px:
            out[i] = rescale(g, GRID, 512)
            used[i] = True
    return Refined(out, peaks, used)
