"""Labels the ISBI data set lacks, derived honestly from what it has (canonical 512 frame, face left).

Profile (Phase 0A): the facial soft tissue, found in the image itself. The annotated landmarks
only say WHERE to look (rows from just below nasion to under the chin, a corridor around the
N-Sn-UL-LL-Pog_soft line, wide in front of the nose). Each row is searched from the air side
toward the face for the first sustained rise in intensity: the air darkens toward the face
(the device's halo) but never brightens, the skin does (see skin_line). The line is cleaned
(nasion-rest jumps on the upper dorsum dropped, running median) and held at or in front of
the annotated soft-tissue points, which lie on the skin; the mask is a band of fixed depth
behind it, closed and opened. An earlier version followed the strongest edge by dynamic
programming with at most 4 px of sideways movement per row and often cut behind the nose.

Contours (Phase 0C): thick polylines through the annotated landmarks, ordered so that the
contract's Phase 0D anchor rules recover the landmarks (see CONTOURS).
"""
from __future__ import annotations

import cv2
import numpy as np

from cephnode.inference.landmarks import ISBI_19

IX = {n: i for i, n in enumerate(ISBI_19)}
BAND_DEPTH = 64          # px at 512: depth of the soft-tissue band behind the skin line
TOP_BELOW_N = 6         # px: the profile starts just below nasion (so 0B's y_n rules fit, see README)
BOTTOM_BELOW_ME = 30     # px: ... and ends under the chin
RISE_MIN = 6.0           # grey levels (0-255, blurred) over 6 px: the least rise that counts as skin
ANNOTATION_ROWS = 3       # rows each side of an annotated soft-tissue point held at or in front of it
DORSUM_UNTIL = 0.45       # fraction of the N-Sn height: the upper nose, where the skin is continuous
DORSUM_STEP = 3.0        # px per row the upper dorsum may move forward
RISE_FRAC = 0.2          # ... or this fraction of the row's strongest rise, whichever is larger


def skin_line(img512: np.ndarray, lm512: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x of the skin (the anterior soft-tissue edge) on each of ``rows``; NaN where none is found.

    Each row is searched from the air side (anterior, small x) toward the face for the first
    sustained rise in intensity. The air is no help as a level: it darkens steadily toward the
    face (the device's halo), so much that a thin nose can be darker than air farther out; but
    air never gets BRIGHTER going posterior, and skin does. The annotated landmarks only say
    where to look: a corridor around the N-Sn-UL-LL-Pog_soft line that is wide in front of the
    nose and narrow near nasion, so the cephalostat's nasion rest and ruler stay outside it."""
    s = cv2.GaussianBlur(img512, (0, 0), 1.5).astype(np.float32)
    gx = np.zeros_like(s)
    gx[:, 1:-1] = 0.5 * (s[:, 2:] - s[:, :-2])
    p = {n: lm512[i] for n, i in IX.items()}
    ky = np.array([p["N"][1], p["Sn"][1], p["UL"][1], p["LL"][1], p["Pog_soft"][1], p["Me"][1] + 15])
    kx = np.array([p["N"][0] - 10, p["Sn"][0], p["UL"][0], p["LL"][0], p["Pog_soft"][0], p["Me"][0] - 5])
    ref = np.interp(rows, ky, kx)
    nose = np.clip((rows - p["N"][1]) / max(1.0, p["Sn"][1] - p["N"][1]), 0, 1)
    reach = np.where(rows < p["Sn"][1], 15 + 85 * np.sin(np.pi * nose * 0.8), 30)
    xs = np.full(len(rows), np.nan)
    for k, r in enumerate(rows):
        x = np.arange(int(max(3, ref[k] - reach[k])), int(min(505, ref[k] + 25)))
        if len(x) < 8:
            continue
        rise = s[r, x + 4] - s[r, x - 2]
        # "sustained rise": a fixed floor against noise, and a fraction of the row's strongest
        # rise so that a faint nose on a dark film still counts
        hits = np.flatnonzero(rise > max(RISE_MIN, RISE_FRAC * float(rise.max())))
        if hits.size == 0:
            continue
        win = np.arange(x[hits[0]] - 2, min(511, x[hits[0]] + 7))
        xs[k] = win[int(np.argmax(gx[r, win]))]       # the edge itself: steepest point of the rise
    # Near nasion the cephalostat's nasion rest ends just in front of the skin; its bar makes a
    # rise that can sit inside the corridor. The skin of the upper nose is continuous: going
    # down the dorsum it moves forward a few px per row at most, so there a sudden jump forward
    # is the rest, not skin (lower down the nose tip and its underside may jump freely).
    last = ref[0] - 20.0
    for k in np.flatnonzero(nose < DORSUM_UNTIL):
        if np.isnan(xs[k]):
            continue
        if xs[k] < last - DORSUM_STEP:
            xs[k] = np.nan
        else:
            last = xs[k]
    return xs


def _clean(xs: np.ndarray, size: int = 9) -> np.ndarray:
    """Running median along the rows (single-row misses, e.g. the nasion rest), gaps filled."""
    ok = np.isfinite(xs)
    if ok.sum() < 2:
        return xs
    idx = np.arange(len(xs))
    filled = np.interp(idx, idx[ok], xs[ok])
    h = size // 2
    padded = np.pad(filled, h, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, size), axis=1)


def derive_profile_mask(img512: np.ndarray, lm512: np.ndarray) -> np.ndarray:
    """(512,512) uint8 {0,1}: the facial soft-tissue band, face left."""
    p = {n: lm512[i] for n, i in IX.items()}
    top = int(max(0, round(p["N"][1] + TOP_BELOW_N)))
    bottom = int(min(511, round(p["Me"][1] + BOTTOM_BELOW_ME)))
    rows = np.arange(top, bottom + 1)
    xs = _clean(skin_line(img512, lm512, rows))
    # The annotated soft-tissue points lie ON the skin, so at their rows the skin cannot be
    # behind them. Where the film is faint (most often just under the nose, at Sn) the search
    # finds only a deeper edge; there the annotation wins, over a few rows (so the mask's
    # 5x5 opening keeps it).
    for name in ("Sn", "UL", "LL", "Pog_soft"):
        r = int(round(p[name][1])) - top
        lo, hi = max(0, r - ANNOTATION_ROWS), min(len(rows), r + ANNOTATION_ROWS + 1)
        if lo < hi:
            xs[lo:hi] = np.minimum(xs[lo:hi], p[name][0] + 1.0)
    xs = np.round(xs)
    mask = np.zeros((512, 512), np.uint8)
    if not np.isfinite(xs).any():
        return mask
    cols = np.arange(512)[None, :]
    band = (cols >= xs[:, None]) & (cols < xs[:, None] + BAND_DEPTH)
    mask[rows] = band.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k), cv2.MORPH_OPEN, k)
    return mask


def profile_prn(mask: np.ndarray) -> np.ndarray | None:
    """Phase 0B's Prn read off a profile mask (canonical frame): most anterior point of the
    smoothed anterior profile with normalised height < 0.35. None if the mask is empty."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = lab == big
    rows = np.nonzero(comp.any(1))[0]
    front = comp[rows].argmax(1).astype(np.float64)  # first foreground column = the face side
    h = rows[-1] - rows[0] + 1
    sigma = max(3.0, 0.015 * h)
    front = cv2.GaussianBlur(front.reshape(-1, 1), (1, 0), sigmaX=0, sigmaY=sigma).ravel() if len(front) > 1 else front
    yn = (rows - rows[0]) / max(1, h - 1)
    sel = yn < 0.35
    k = int(np.argmin(np.where(sel, front, np.inf)))
    return np.array([front[k], float(rows[k])])
