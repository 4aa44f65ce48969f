"""Labels the ISBI data set lacks, derived honestly from what it has (canonical 512 frame, face left).

Profile (Phase 0A): the facial soft tissue, found in the image itself. Guided only by the
annotated landmarks for WHERE to look (rows from just below nasion to below the chin, a start
point inside the tissue), each row is scanned from inside the tissue toward the face until the
smoothed intensity falls to the air level (ISBI's edge enhancement leaves a dark halo in the air
just outside the skin, which makes this drop sharp). The skin line is median-filtered; the mask
is a band of fixed depth behind it (the anterior soft tissue), closed and opened.

Contours (Phase 0C): thick polylines through the annotated landmarks, ordered so that the
contract's Phase 0D anchor rules recover the landmarks (see CONTOURS).
"""
from __future__ import annotations

import cv2
import numpy as np

from inference.landmarks import ISBI_19

IX = {n: i for i, n in enumerate(ISBI_19)}
BAND_DEPTH = 64          # px at 512: depth of the soft-tissue band behind the skin line
TOP_BELOW_N = 6          # px: the profile starts just below nasion (so 0B's y_n rules fit, see README)
BOTTOM_BELOW_ME = 30     # px: ... and ends under the chin


def _min_cost_path(cost: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    """Dynamic programme: one x per row, |x[r+1]-x[r]| <= max_step[r], minimal summed cost."""
    rows, w = cost.shape
    acc = cost[0].copy()
    back = np.zeros((rows, w), np.int32)
    cols = np.arange(w)
    for r in range(1, rows):
        k = int(max_step[r])
        # best predecessor within +-k: stack shifted copies (k is small)
        shifts = np.arange(-k, k + 1)
        cand = np.full((len(shifts), w), np.inf)
        for j, d in enumerate(shifts):
            lo, hi = max(0, d), min(w, w + d)
            cand[j, lo - d:hi - d] = acc[lo:hi]
        best = cand.argmin(0)
        back[r] = np.clip(cols + shifts[best], 0, w - 1)
        acc = cand[best, cols] + cost[r]
    path = np.empty(rows, np.int64)
    path[-1] = int(acc.argmin())
    for r in range(rows - 1, 0, -1):
        path[r - 1] = back[r, path[r]]
    return path


def derive_profile_mask(img512: np.ndarray, lm512: np.ndarray) -> np.ndarray:
    """(512,512) uint8 {0,1}: the facial soft-tissue band, face left."""
    s = cv2.GaussianBlur(img512, (0, 0), 1.5).astype(np.float32)
    p = {n: lm512[i] for n, i in IX.items()}
    top = int(round(p["N"][1] + TOP_BELOW_N))
    bottom = int(min(511, round(p["Me"][1] + BOTTOM_BELOW_ME)))
    rows = np.arange(top, bottom + 1)
    # The skin is where the intensity steps up from the dark halo (air) into the tissue, going
    # posterior (+x): follow the strongest such edge from row to row (dynamic programme), held
    # to pass through the annotated soft-tissue points that lie ON the skin, and kept in a
    # corridor around them (the nasion rest and ruler of the cephalostat stay outside it).
    # CLAHE first: the soft tissue is faint against the air until local contrast is equalised.
    eq = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply(s.astype(np.uint8)).astype(np.float32)
    gx = cv2.Sobel(cv2.GaussianBlur(eq, (0, 0), 1.0), cv2.CV_32F, 1, 0, ksize=5)
    edge = np.maximum(gx[rows], 0.0)
    # saturate early: the faint skin edge must count as much as a bone edge behind it
    edge = edge / (np.percentile(edge, 92) + 1e-6)
    # Small pull toward the front: of two edges, the skin is the anterior one (bone lies behind).
    cost = -np.minimum(edge, 1.0) + 0.003 * np.arange(512)[None, :]
    ky = np.array([p["N"][1], p["Sn"][1], p["UL"][1], p["LL"][1], p["Pog_soft"][1], p["Me"][1] + 15])
    kx = np.array([p["N"][0] - 10, p["Sn"][0], p["UL"][0], p["LL"][0], p["Pog_soft"][0], p["Me"][0] - 5])
    ref = np.interp(rows, ky, kx)
    # nose: up to 90 px in front of the N-Sn line in the middle of the nose, little at nasion
    nose = np.clip((rows - p["N"][1]) / max(1.0, p["Sn"][1] - p["N"][1]), 0, 1)
    reach = 15 + 85 * np.sin(np.pi * np.clip(nose, 0, 1) * 0.8) * (rows < p["Sn"][1])
    cols = np.arange(512)[None, :]
    outside = (cols < (ref - reach)[:, None]) | (cols > (ref + 30)[:, None])
    cost = np.where(outside, 1e3, cost)
    for name in ("Sn", "UL", "LL", "Pog_soft"):
        r = int(round(p[name][1])) - top
        if 0 <= r < len(rows):
            far = np.abs(np.arange(512) - p[name][0]) > 3
            cost[r, far] = 1e3
    steps = np.where(rows > p["Pog_soft"][1], 8, 4)
    xs = _min_cost_path(cost, steps)
    mask = np.zeros((512, 512), np.uint8)
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
