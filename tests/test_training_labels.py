"""Derived labels on real ISBI images: the contour labels make the contract's Phase 0D rules
(the pipeline's own code, inference.anchors / inference.zones) recover the annotated anchors,
and the derived profile mask is a face-side soft-tissue band that passes the soft-tissue points."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cephnode.inference.anchors import find_anchors
from cephnode.inference.landmarks import ISBI_19
from cephnode.inference.zones import band_midline, zone_contours
from cephnode.training import cache, isbi, labels, zones

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


# The profile label on real train images (Phase 0A): found in the image, it must lie on the skin
# where the annotators put the soft-tissue points, and it must include the nose (an earlier
# edge-path label often cut behind it, and 0B's nose tip then fell inside the face).
PROFILE_CASES = ("001", "033", "077", "130", "150")
MM_PER_PX_512 = np.array([968 * 0.19989669421487602 / 512, 1200 * 0.2 / 512])  # (x, y)


@pytest.mark.parametrize("cid", PROFILE_CASES)
def test_profile_label_lies_on_the_annotated_skin_and_includes_the_nose(cid):
    img, lm = _case(cid)
    mask = labels.derive_profile_mask(img, lm)
    outline = np.concatenate([c.reshape(-1, 2) for c in
                              cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]]).astype(float)
    for name in ("Sn", "UL", "LL", "Pog_soft"):
        gap_mm = float(np.hypot(*((outline - lm[IX[name]]) * MM_PER_PX_512).T).min())
        assert gap_mm <= 1.0, f"{cid}: the label's skin line misses {name} by {gap_mm:.2f} mm"
    rows = np.nonzero(mask.any(1))[0]
    front = mask[rows].argmax(1)                 # first tissue column of each row (face left)
    sn_x, sn_y = lm[IX["Sn"]]
    nose_x = front[rows < sn_y].min()
    # the nose tip stands well in front of subnasale (ISBI: 10-25 mm; 5 px = 2 mm here)
    assert nose_x < sn_x - 5, f"{cid}: most anterior label point above Sn at x={nose_x}, Sn at {sn_x:.0f}"


def test_skin_line_finds_a_faint_nose_darker_than_the_far_air():
    """A synthetic row set like ISBI's: the air darkens toward the face (halo), a faint nose
    bump is darker than the air far out but brighter than the air just in front of it; the
    search must stop at the nose's front edge, not at the brighter face behind it."""
    img = np.zeros((512, 512), np.uint8)
    cols = np.arange(512)
    air = np.clip(120 - 0.8 * cols, 10, None)                    # halo: darker toward the face
    lm = np.zeros((19, 2), np.float32)
    for n, (x, y) in {"N": (210, 100), "Sn": (200, 260), "UL": (195, 290), "LL": (195, 330),
                      "Pog_soft": (205, 380), "Me": (230, 400)}.items():
        lm[IX[n]] = (x, y)
    for r in range(512):
        row = air.copy()
        row[200:] = 150                                          # face
        if 180 <= r < 250:
            row[120:200] = np.maximum(row[120:200], 55)          # the nose: faint, x 120-200
        img[r] = np.clip(row, 0, 255).astype(np.uint8)
    rows = np.arange(106, 431)
    xs = labels.skin_line(img, lm, rows)
    at_nose = xs[(rows >= 190) & (rows < 240)]
    assert np.all(np.abs(at_nose - 120) <= 2), at_nose
    below = xs[(rows >= 300) & (rows < 330)]
    assert np.all(np.abs(below - 200) <= 2), below


def test_a_cache_written_with_older_profile_labels_gets_them_derived_again(tmp_path):
    """`cephnode train` reads the profile labels from the decoded-image cache; a cache written
    before the skin-search labels (no profile_version) must not hand the old masks to training."""
    img, lm = _case("130")
    stale = np.zeros((1, 512, 512), np.uint8)
    path = tmp_path / "isbi512.npz"
    np.savez(path, ids=np.array(["130"]), split=np.array(["train"]), images=img[None],
             landmarks=lm[None].astype(np.float32), senior=lm[None].astype(np.float32),
             junior=lm[None].astype(np.float32), profile=stale, src_size=np.array([968, 1200]))
    ds = cache.load(path)
    assert np.array_equal(ds.profile[0], labels.derive_profile_mask(img, lm))
    assert ds.profile[0].any()
