"""Derived labels on real ISBI images: the contour labels make the contract's Phase 0D rules
(the pipeline's own code, inference.anchors / inference.zones) recover the annotated anchors,
and the derived profile mask is a face-side soft-tissue band that passes the soft-tissue points."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.anchors import find_anchors
from inference.landmarks import ISBI_19
from inference.zones import band_midline, zone_contours
from training import cache, isbi, labels, zones

CASES = ("001", "077", "150")
IX = {n: i for i, n in enumerate(ISBI_19)}
PX_PER_MM_512 = 512 / 240.0  # ISBI: 1200 rows x 0.2 mm on 512 rows


def _case(cid: str):
    c = [x for x in isbi.load_cases("train") if x.case_id == cid][0]
    w, h = isbi.metadata()["image_size"]
    return cache.canonical_image(c.image_path), cache.to_canonical(c.mean, w, h)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    img, lm = _case(request.param)
    return request.param, img, lm, labels.derive_profile_mask(img, lm)


def _lines_from_labels(lm: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    boxes = zones.zone_boxes(mask)
    lines: dict[str, np.ndarray] = {}
    for z in ("z1", "z2", "z3"):  # the primary sources of each class
        lab = zones.contour_label(lm, boxes[z], z).astype(np.float32)
        logits = (lab * 2.0 - 1.0)[None]  # a perfect net: logit > 0 exactly on the label
        for cls, contour in zone_contours(logits, z, boxes[z]).items():
            lines.setdefault(cls, band_midline(contour))
    return lines


def test_phase0d_rules_recover_anchors_from_derived_contours(case):
    cid, img, lm, mask = case
    lines = _lines_from_labels(lm, mask)
    assert "upper_incisor_axis" not in lines and "lower_incisor_axis" not in lines  # declared empty
    nose = lm[IX["Sn"]] - (20.0, 10.0)  # a point in front of the face, like Prn
    anchors, _ = find_anchors(lines, nose, PX_PER_MM_512)
    tol_mm = {"S": 2.0, "N": 2.0, "ANS": 2.0, "Me": 2.0, "Pog": 3.0, "Go": 3.0}
    for name, tol in tol_mm.items():
        assert name in anchors, f"{cid}: {name} not found"
        err_mm = float(np.hypot(*(anchors[name] - lm[IX[name]]))) / PX_PER_MM_512
        assert err_mm <= tol, f"{cid}: {name} recovered {err_mm:.2f} mm from its label"


def test_profile_mask_is_a_face_side_band_through_soft_tissue_points(case):
    cid, img, lm, mask = case
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    rows = np.nonzero(mask.any(1))[0]
    assert rows[0] >= lm[IX["N"]][1] and rows[-1] <= lm[IX["Me"]][1] + 40
    outline = np.concatenate([c.reshape(-1, 2) for c in
                              cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]])
    # Sn sits in the corner under the nose, where the 5x5 opening rounds the outline off
    for name, tol in (("Sn", 10.0), ("UL", 4.0), ("LL", 4.0), ("Pog_soft", 4.0)):
        gap = float(np.hypot(*(outline - lm[IX[name]]).T).min())
        assert gap <= tol, f"{cid}: the mask's outline misses {name} by {gap:.1f} px"
    # the band lies in front of the skull: its back edge is well before the sella
    assert np.nonzero(mask)[1].max() < lm[IX["S"]][0]


def test_prn_rule_reads_the_nose_tip_off_a_profile_mask():
    """Phase 0B's Prn rule on a mask whose answer is known: a band with a nose bump at 25 %."""
    mask = np.zeros((512, 512), np.uint8)
    rows = np.arange(100, 420)
    front = np.full(rows.shape, 150.0)
    bump = np.exp(-((rows - 180) ** 2) / (2 * 12.0 ** 2))  # nose tip at row 180 (25 % of the height)
    front -= 60 * bump
    front[rows > 350] -= 30 * np.exp(-((rows[rows > 350] - 390) ** 2) / 200.0)  # a chin below 75 %
    for r, f in zip(rows, front):
        mask[r, int(round(f)):int(round(f)) + 64] = 1
    prn = labels.profile_prn(mask)
    assert prn is not None
    # 0B smooths the profile (sigma = max(3, 1.5 % of 320 rows) = 4.8): the bump's peak shrinks
    # to 60 * 12 / sqrt(12^2 + 4.8^2)
    expected_x = 150 - 60 * 12 / np.hypot(12.0, 4.8)
    assert abs(prn[1] - 180) <= 2 and abs(prn[0] - expected_x) <= 1.0
    assert labels.profile_prn(np.zeros((512, 512), np.uint8)) is None
