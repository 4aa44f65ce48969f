"""Phases 0A (profile mask from the network output) and 0B (soft-tissue profile geometry and
zone boxes). Everything here is on the 512 grid in the canonical pose (face to the left)."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cephnode.inference.geometry import WORK

MIN_PROFILE_PIXELS = 50
PAD = 51                      # zone padding p
MIN_ZONE_SIDE = 128
FIXED_ZONES = {"z1": (77, 0, 512, 486), "z4": (25, 0, 512, 486)}
FALLBACK_ZONES = {"z2": (0, 0, 384, 307), "z3": (0, 153, 512, 512), "z5": (0, 10, 230, 501)}
# Per-zone CLAHE (clipLimit, tile grid)
CLAHE = {"z1": (3.0, 4), "z2": (2.5, 8), "z3": (3.0, 6), "z4": (3.5, 4), "z5": (1.5, 8)}


class StageFailure(RuntimeError):
    """A Stage 0 phase could not produce its output; carries the phase name."""

    def __init__(self, phase: str, reason: str):
        super().__init__(f"{phase}: {reason}")
        self.phase = phase
        self.reason = reason


def profile_mask(output: np.ndarray) -> np.ndarray:
    """0A network output (1,1,H,W) sigmoid or (1,2,H,W) softmax-style -> bool mask (H, W)."""
    out = output[0]
    if out.shape[0] == 2:
        return out[1] > out[0]
    return out[0] > 0.5


@dataclass
class Profile:
    """The anterior soft-tissue profile: for each row, the most anterior (smallest x) point."""
    ys: np.ndarray              # rows, increasing
    xs: np.ndarray              # raw anterior x per row
    xs_smooth: np.ndarray       # Gaussian-smoothed x
    points: dict[str, tuple[float, float]] = field(default_factory=dict)
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)     # whole 0A mask: x_min, y_min, x_max, y_max
    centroid: tuple[float, float] = (0.0, 0.0)          # whole 0A mask
    pixels: int = 0                                     # largest component


def gaussian_smooth_1d(v: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(v.astype(np.float64), radius, mode="reflect" if len(v) > radius else "edge")
    return np.convolve(padded, k, mode="valid")


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int, tuple[int, int, int, int], tuple[float, float]]:
    """(component mask, area, bbox x_min, y_min, x_max, y_max, centroid (x, y))."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool), 0, (0, 0, 0, 0), (0.0, 0.0)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[best])
    cx, cy = centroids[best]
    return labels == best, area, (x, y, x + w - 1, y + h - 1), (float(cx), float(cy))


def anterior_profile(component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and the most anterior contour x of each row, from the component's outer contour."""
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.empty(0, int), np.empty(0, float)
    pts = max(contours, key=len).reshape(-1, 2)
    ys = pts[:, 1]
    y0 = int(ys.min())
    n = int(ys.max()) - y0 + 1
    xs = np.full(n, np.iinfo(np.int32).max, dtype=np.int64)
    np.minimum.at(xs, ys - y0, pts[:, 0])          # most anterior = smallest x (face left)
    rows = np.arange(y0, y0 + n)
    return rows, xs.astype(np.float64)


def _argext(values: np.ndarray, sel: np.ndarray, largest: bool, peaks: np.ndarray | None = None) -> int | None:
    """Index of the largest/smallest value among the selected rows.

    With ``peaks`` (a mask of local extrema of the right kind), a peak inside the window wins
    over the window's edge: on a slanted face the plain extreme of a window is often its first
    or last row, which is where the window was cut, not a feature of the face."""
    idx = np.flatnonzero(sel)
    if idx.size == 0:
        return None
    if peaks is not None:
        inner = idx[peaks[idx]]
        if inner.size:
            idx = inner
    v = values[idx]
    return int(idx[np.argmax(v) if largest else np.argmin(v)])


def _local_extrema(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local minima, local maxima) of x along the profile; plateaus count once."""
    n = len(xs)
    lo = np.zeros(n, bool)
    hi = np.zeros(n, bool)
    if n >= 3:
        a, b, c = xs[:-2], xs[1:-1], xs[2:]
        lo[1:-1] = (b <= a) & (b <= c) & ((b < a) | (b < c))
        hi[1:-1] = (b >= a) & (b >= c) & ((b > a) | (b > c))
    return lo, hi


def profile_points(ys: np.ndarray, xs: np.ndarray, xs_raw: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Prn, Sn, UL, LL, Pog_soft, Pm: rows chosen on the smoothed profile xs by normalised
    height; x taken from the unsmoothed profile xs_raw at that row (smoothing flattens a
    nose tip by several pixels), or from xs when no raw profile is given."""
    yn = (ys - ys[0]) / max(1.0, float(ys[-1] - ys[0]))
    # Anterior points (Prn, UL, LL, Pog_soft) are bumps: local minima of x (face left).
    # Sn is the deepest concavity: the most posterior local maximum of x.
    bump, hollow = _local_extrema(xs)
    pts: dict[str, int] = {}
    prn = _argext(xs, yn < 0.35, largest=False, peaks=bump)
    if prn is not None:
        pts["Prn"] = prn
    sn = _argext(xs, (yn > 0.25) & (yn < 0.50), largest=True, peaks=hollow)
    if sn is not None:
        pts["Sn"] = sn
        ul = _argext(xs, (yn > yn[sn]) & (yn <= min(yn[sn] + 0.15, 0.55)), largest=False, peaks=bump)
        if ul is not None:
            pts["UL"] = ul
            ll = _argext(xs, (yn > yn[ul] + 0.02) & (yn <= min(yn[ul] + 0.18, 0.70)), largest=False, peaks=bump)
            if ll is not None:
                pts["LL"] = ll
    pog = _argext(xs, yn > 0.75, largest=False, peaks=bump)
    if pog is not None:
        pts["Pog_soft"] = pog
    if "LL" in pts and "Pog_soft" in pts and pts["Pog_soft"] - pts["LL"] >= 3:
        a, b = pts["LL"], pts["Pog_soft"]
        d2 = np.gradient(np.gradient(xs))
        s = np.sign(d2[a:b + 1])
        changes = a + np.flatnonzero(s[:-1] * s[1:] < 0)
        mid = 0.5 * (a + b)
        pts["Pm"] = int(changes[np.argmin(np.abs(changes - mid))]) if changes.size else int(round(mid))
    xr = xs if xs_raw is None else xs_raw
    return {k: (float(xr[i]), float(ys[i])) for k, i in pts.items()}


def analyse_profile(mask: np.ndarray) -> Profile:
    """0B: from the 0A mask to the profile, its soft-tissue points, bbox and centroid."""
    comp, area, _bbox, _centroid = largest_component(mask)
    if area < MIN_PROFILE_PIXELS:
        raise StageFailure("0A", f"profile mask has {area} foreground pixels in its largest component (< {MIN_PROFILE_PIXELS})")
    ys, xs = anterior_profile(comp)
    if len(ys) < 20:
        raise StageFailure("0B", f"profile spans only {len(ys)} rows")
    sigma = max(3.0, 0.015 * len(ys))
    xs_s = gaussian_smooth_1d(xs, sigma)
    pts = profile_points(ys.astype(np.float64), xs_s, xs)
    if "Prn" not in pts:
        raise StageFailure("0B", "no nose tip (Prn) on the profile")
    # Zone boxes come from the whole 0A mask's bounding box and centroid (the contract's words;
    # training/zones.py does the same), not from the largest component alone.
    m8 = mask.astype(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(m8)
    mom = cv2.moments(m8, binaryImage=True)
    bbox = (bx, by, bx + bw - 1, by + bh - 1)
    centroid = (mom["m10"] / mom["m00"], mom["m01"] / mom["m00"])
    return Profile(ys.astype(np.float64), xs, xs_s, pts, bbox, centroid, area)


def _clamp_box(box, size: int = WORK) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(size, x2), min(size, y2)
    # Minimum side: grow around the centre, then shift back inside the image.
    bx = [x1, y1, x2, y2]
    for a, b in ((0, 2), (1, 3)):
        if bx[b] - bx[a] < MIN_ZONE_SIDE:
            c = 0.5 * (bx[a] + bx[b])
            bx[a] = int(round(c - MIN_ZONE_SIDE / 2))
            bx[b] = bx[a] + MIN_ZONE_SIDE
            if bx[a] < 0:
                bx[a], bx[b] = 0, MIN_ZONE_SIDE
            if bx[b] > size:
                bx[a], bx[b] = size - MIN_ZONE_SIDE, size
    return bx[0], bx[1], bx[2], bx[3]


def zone_boxes(profile: Profile | None) -> dict[str, tuple[int, int, int, int]]:
    """The five zone boxes (x1, y1, x2, y2) at 512; fallback boxes when 0A failed."""
    boxes = dict(FIXED_ZONES)
    if profile is None:
        boxes.update(FALLBACK_ZONES)
        return {k: boxes[k] for k in ("z1", "z2", "z3", "z4", "z5")}
    x_min, y_min, x_max, y_max = profile.bbox
    cy = profile.centroid[1]
    p = PAD
    ys = int(0.95 * cy)
    xa = int(x_max + 0.25 * (WORK - x_max))
    boxes["z2"] = _clamp_box((0, 0, xa + 3 * p, ys + 4 * p))
    boxes["z3"] = _clamp_box((0, ys - 4 * p, WORK, WORK))
    boxes["z5"] = _clamp_box((x_min - 4 * p, y_min - 3 * p, x_max + 4 * p, y_max + 3 * p))
    return {k: boxes[k] for k in ("z1", "z2", "z3", "z4", "z5")}
