"""Each geometric phase on shapes whose right answer is known."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cephnode.inference import anchors as A
from cephnode.inference.decode import decode_heatmaps
from cephnode.inference.geometry import rescale
from cephnode.inference.priors import SIGMAS_256, anchor_vector, attention_maps, derived_points
from cephnode.inference.profile import (FALLBACK_ZONES, PAD, StageFailure, analyse_profile, profile_mask,
                               profile_points, zone_boxes)
from cephnode.inference.zones import band_midline, longest_contour, zone_contours
from cephnode.inference.landmarks import ANCHOR_ORDER, DERIVED_ORDER, INDEX


# ---- 0A ---------------------------------------------------------------------------------------

def test_profile_mask_accepts_sigmoid_and_two_channel_outputs():
    prob = np.zeros((1, 1, 8, 8), np.float32)
    prob[0, 0, 2:5, 3:6] = 0.9
    prob[0, 0, 0, 0] = 0.5              # exactly 0.5 is not foreground
    m1 = profile_mask(prob)
    assert m1.sum() == 9 and not m1[0, 0]
    two = np.zeros((1, 2, 8, 8), np.float32)
    two[0, 0] = 0.6
    two[0, 1, 2:5, 3:6] = 0.7          # ch1 > ch0 only there; absolute level irrelevant
    m2 = profile_mask(two)
    assert np.array_equal(m1, m2)


def test_tiny_mask_fails_phase_0a():
    mask = np.zeros((512, 512), bool)
    mask[10:15, 10:15] = True          # 25 pixels < 50
    with pytest.raises(StageFailure) as exc:
        analyse_profile(mask)
    assert exc.value.phase == "0A"


# ---- 0B ---------------------------------------------------------------------------------------

def _face_mask(nose_y=150, nose_depth=60, chin_y=420):
    """Head silhouette facing left: the anterior edge x(y) is 200 with a nose bump at nose_y,
    a concavity (subnasale) below it, lips, and a chin bump at chin_y."""
    y = np.arange(60, 470)
    x = np.full(y.shape, 200.0)
    x -= nose_depth * np.exp(-0.5 * ((y - nose_y) / 14.0) ** 2)      # nose: most anterior
    x += 25 * np.exp(-0.5 * ((y - (nose_y + 45)) / 10.0) ** 2)         # subnasal concavity
    x -= 20 * np.exp(-0.5 * ((y - (nose_y + 75)) / 8.0) ** 2)          # upper lip
    x -= 18 * np.exp(-0.5 * ((y - (nose_y + 110)) / 8.0) ** 2)         # lower lip
    x -= 30 * np.exp(-0.5 * ((y - chin_y) / 15.0) ** 2)                # soft chin
    mask = np.zeros((512, 512), bool)
    cols = np.arange(512)[None, :]
    mask[y] = cols >= x[:, None]
    mask[y, 480:] = True
    return mask, y, x


def test_profile_finds_the_drawn_nose_tip_and_chin():
    mask, y, x = _face_mask(nose_y=150, chin_y=420)
    prof = analyse_profile(mask)
    prn = prof.points["Prn"]
    assert abs(prn[1] - 150) <= 2 and abs(prn[0] - x[y == 150][0]) <= 2
    assert abs(prof.points["Pog_soft"][1] - 420) <= 3
    # subnasale sits in the concavity below the nose, and the lips below it in order
    assert 185 <= prof.points["Sn"][1] <= 205
    assert prof.points["Sn"][1] < prof.points["UL"][1] < prof.points["LL"][1] < prof.points["Pog_soft"][1]
    assert prof.points["LL"][1] < prof.points["Pm"][1] < prof.points["Pog_soft"][1]
    assert prof.bbox[1] == 60 and prof.bbox[3] == 469


def test_profile_points_respect_normalised_height_windows():
    # A straight vertical profile with one anterior spike at y_n = 0.5: Prn must not take it
    # (Prn only looks above 0.35), Pog_soft must not either (only below 0.75).
    ys = np.arange(0, 101, dtype=float)
    xs = np.full(101, 100.0)
    xs[50] = 10.0
    pts = profile_points(ys, xs)
    assert pts["Prn"][1] < 35 and pts["Pog_soft"][1] > 75


def test_zone_boxes_follow_the_published_formulas():
    mask, _, _ = _face_mask()
    prof = analyse_profile(mask)
    boxes = zone_boxes(prof)
    x_min, y_min, x_max, y_max = prof.bbox
    cy = prof.centroid[1]
    ys, xa, p = int(0.95 * cy), int(x_max + 0.25 * (512 - x_max)), PAD
    assert boxes["z1"] == (77, 0, 512, 486) and boxes["z4"] == (25, 0, 512, 486)
    assert boxes["z2"] == (0, 0, min(512, xa + 3 * p), min(512, ys + 4 * p))
    assert boxes["z3"] == (0, max(0, ys - 4 * p), 512, 512)
    assert boxes["z5"] == (max(0, x_min - 4 * p), max(0, y_min - 3 * p), min(512, x_max + 4 * p), min(512, y_max + 3 * p))
    fb = zone_boxes(None)
    for z, b in FALLBACK_ZONES.items():
        assert fb[z] == b


def test_small_zone_boxes_grow_to_the_minimum_side():
    from cephnode.inference.profile import _clamp_box
    b = _clamp_box((500, 10, 512, 40))
    assert b[2] - b[0] == 128 and b[3] - b[1] == 128 and b[2] <= 512 and b[0] >= 0


# ---- 0C ---------------------------------------------------------------------------------------

def test_zone_contours_keep_the_longest_contour_back_in_the_box():
    logits = np.full((1, 1, 256, 256), -5.0, np.float32)
    logits[0, 0, 100:110, 20:220] = 5.0      # long bar
    logits[0, 0, 30:40, 30:40] = 5.0         # small blob, must lose
    logits[0, 0, 200, 200] = 5.0             # single pixel, removed by the opening
    box = (100, 50, 356, 306)                # 256 x 256 box: scale 1
    out = zone_contours(logits, "z1", box)
    c = out["cranial_base"]
    assert c[:, 0].min() == pytest.approx(120, abs=1) and c[:, 0].max() == pytest.approx(319, abs=1)
    assert c[:, 1].min() == pytest.approx(150, abs=1) and c[:, 1].max() == pytest.approx(159, abs=1)


def test_band_midline_runs_end_to_end_along_a_thick_curve():
    img = np.zeros((512, 512), np.uint8)
    t = np.linspace(0, 1, 200)
    pts = np.stack([100 + 300 * t, 200 + 80 * np.sin(np.pi * t)], 1)
    cv2.polylines(img, [pts.round().astype(np.int32)], False, 1, thickness=9)
    mid = band_midline(longest_contour(img))
    ends = sorted([tuple(mid[0]), tuple(mid[-1])])
    assert np.hypot(*(np.array(ends[0]) - pts[0])) < 8
    assert np.hypot(*(np.array(ends[1]) - pts[-1])) < 8
    # the middle of the midline lies on the drawn curve, not on one side of the band
    m = mid[len(mid) // 2]
    assert np.min(np.hypot(*(pts - m).T)) < 2.5


# ---- 0D ---------------------------------------------------------------------------------------

def test_px_per_mm_uses_true_spacing_else_the_standard_field():
    # 1000 x 1000 image at 0.1 mm: 100 mm across 512 px
    assert A.work_px_per_mm(1000, 1000, (0.1, 0.1)) == pytest.approx(5.12)
    # unknown spacing: portrait image spans 200 x 250 mm
    assert A.work_px_per_mm(968, 1200, None) == pytest.approx(0.5 * (512 / 200 + 512 / 250))


def test_douglas_peucker_tolerance_is_in_millimetres():
    x = np.linspace(0, 100, 101)
    poly = np.stack([x, 2.0 * np.sin(x / 10.0)], 1)        # wiggle of 2 px amplitude
    # palatal plane tolerance 1 mm: at 5 px/mm that is 5 px > the wiggle, at 0.4 px/mm 0.4 px
    _, coarse = A.find_anchors({"palatal_plane": poly}, None, px_per_mm=5.0)
    _, fine = A.find_anchors({"palatal_plane": poly}, None, px_per_mm=0.4)
    assert len(coarse["palatal_plane"]) == 2 and len(fine["palatal_plane"]) > 5


def test_sharpest_turn_finds_the_known_corner():
    # Ramus down then border forward: the corner is at 30 % of arc length; a gentler bend at 80 %.
    ramus = np.stack([np.full(31, 400.0), np.linspace(200, 300, 31)], 1)
    border = np.stack([np.linspace(400, 200, 51), np.full(51, 300.0)], 1)
    bend = np.stack([np.linspace(200, 170, 21), 300 + np.linspace(0, 10, 21)], 1)
    poly = np.concatenate([ramus, border[1:], bend[1:]])
    lines = {"mandibular_border": poly}
    chin = np.array([170.0, 310.0])
    anchors, _ = A.find_anchors(lines, None, px_per_mm=2.0, chin_hint=chin)
    assert np.allclose(anchors["Go"], [400, 300], atol=1.5)
    # given the other way round, orientation towards the chin still finds the same corner
    anchors2, _ = A.find_anchors({"mandibular_border": poly[::-1].copy()}, None, 2.0, chin_hint=chin)
    assert np.allclose(anchors2["Go"], [400, 300], atol=1.5)


def test_cranial_base_gives_nasion_at_the_nose_end_and_sella_at_the_dip():
    x = np.linspace(380, 180, 201)                       # posterior -> anterior (face left)
    y = np.full_like(x, 200.0)
    dip = np.exp(-0.5 * ((x - 310) / 12.0) ** 2) * 25     # sella: 35 % of the way from the back
    poly = np.stack([x, y + dip], 1)
    prn = np.array([120.0, 260.0])
    anchors, simplified = A.find_anchors({"cranial_base": poly[::-1].copy()}, prn, px_per_mm=4.0)
    assert np.allclose(anchors["N"], [180, 200], atol=1)
    assert anchors["S"][0] == pytest.approx(310, abs=6) and anchors["S"][1] == pytest.approx(225, abs=3)
    assert np.allclose(simplified["cranial_base"][-1], anchors["N"])


def test_symphysis_gives_menton_at_the_bottom_and_pogonion_at_the_bulge():
    t = np.linspace(0, 1, 101)
    y = 350 + 80 * t                                   # from the incisors down to the chin bottom
    x = 200 - 18 * np.sin(np.pi * np.clip((t - 0.1) / 0.7, 0, 1))   # anterior bulge near 45 %
    poly = np.stack([x, y], 1)
    anchors, _ = A.find_anchors({"mandibular_symphysis": poly}, None, px_per_mm=4.0)
    assert np.allclose(anchors["Me"], [200, 430], atol=1)
    assert anchors["Pog"][1] == pytest.approx(350 + 80 * 0.45, abs=6)
    assert anchors["Pog"][0] < 185


def test_palatal_plane_gives_ans_at_the_nose_end():
    poly = np.stack([np.linspace(150, 330, 50), np.linspace(250, 260, 50)], 1)
    anchors, _ = A.find_anchors({"palatal_plane": poly}, np.array([100.0, 230.0]), 4.0)
    assert np.allclose(anchors["ANS"], [150, 250], atol=0.5)


# ---- 0E ---------------------------------------------------------------------------------------

def test_anchor_vector_order_and_missing_anchors():
    v = anchor_vector({"N": np.array([256.0, 128.0]), "Prn": np.array([51.2, 102.4])})
    assert v.shape == (1, 14) and v.dtype == np.float32
    i_n, i_prn = ANCHOR_ORDER.index("N"), ANCHOR_ORDER.index("Prn")
    assert v[0, 2 * i_n] == pytest.approx(0.5) and v[0, 2 * i_n + 1] == pytest.approx(0.25)
    assert v[0, 2 * i_prn] == pytest.approx(0.1) and v[0, 2 * i_prn + 1] == pytest.approx(0.2)
    i_s = ANCHOR_ORDER.index("S")
    assert v[0, 2 * i_s] == 0.5 and v[0, 2 * i_s + 1] == 0.5


def test_derived_points_follow_derived_order():
    out = np.arange(36, dtype=np.float32)[None] / 100.0
    d = derived_points(out)
    assert list(d) == list(DERIVED_ORDER)
    assert np.allclose(d["Or"], [0.0, 0.01 * 512]) and np.allclose(d["Sn"], [0.34 * 512, 0.35 * 512])


def test_attention_maps_match_a_gaussian_drawn_at_256_and_upsampled():
    rng = np.random.default_rng(3)
    pts = rng.uniform(20, 490, (25, 2))
    pts[7] = np.nan                                   # no position -> all-zero channel
    maps = attention_maps(pts)
    c = rescale(np.nan_to_num(pts), 512, 256)
    g = np.arange(256, dtype=np.float64)
    ref = np.exp(-0.5 * (((g[None, :, None] - c[:, 1, None, None]) ** 2 + (g[None, None, :] - c[:, 0, None, None]) ** 2)
                         / SIGMAS_256[:, None, None] ** 2)).astype(np.float32)
    up = np.stack([cv2.resize(r, (512, 512), interpolation=cv2.INTER_LINEAR) for r in ref])
    up[7] = 0
    assert maps.shape == (25, 512, 512)
    assert np.abs(maps - up).max() < 1e-5
    assert maps[7].max() == 0
    # sigma really is per landmark: Prn (5) is sharper than Ba (22)
    assert SIGMAS_256[INDEX["Prn"]] == 5 and SIGMAS_256[INDEX["Ba"]] == 22
    assert (maps[INDEX["Prn"]] > 0.5).sum() < (maps[INDEX["Ba"]] > 0.5).sum()


# ---- Stage 1 decoding -------------------------------------------------------------------------

@pytest.mark.parametrize("x,y,sigma", [(100.3, 50.7, 2.0), (10.45, 200.2, 3.0), (128.0, 128.49, 1.5), (200.77, 33.12, 6.0)])
def test_dark_recovers_a_known_sub_pixel_peak(x, y, sigma):
    yy, xx = np.mgrid[:256, :256]
    hm = np.zeros((25, 256, 256), np.float32)
    hm[4] = 0.8 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    xy, peaks = decode_heatmaps(hm)
    assert xy[4] == pytest.approx([x, y], abs=0.02)
    assert 0.7 < peaks[4] <= 0.8
    # plain argmax would be off by up to half a pixel; DARK is not
    assert np.hypot(*(xy[4] - [x, y])) < 0.02


def test_dark_offset_is_clipped_and_flat_maps_stay_at_the_argmax():
    hm = np.zeros((2, 64, 64), np.float32)
    hm[0, 10, 20] = 1.0                    # a lone spike: Taylor step would be wild -> clipped
    xy, peaks = decode_heatmaps(hm)
    assert abs(xy[0, 0] - 20) <= 0.5 and abs(xy[0, 1] - 10) <= 0.5
    assert peaks[1] == 0.0 and tuple(xy[1]) == (0.0, 0.0)


def test_zone_boxes_use_the_whole_mask_like_training():
    from cephnode.training.zones import zone_boxes as training_zone_boxes
    mask, _, _ = _face_mask()
    mask[5:12, 5:12] = True                      # a speck outside the main component
    assert zone_boxes(analyse_profile(mask)) == training_zone_boxes(mask)


def test_a_slanted_face_picks_the_chin_bump_not_the_window_edge():
    # The profile slants backwards towards the chin (x grows with y), so the plain most
    # anterior row with y_n > 0.75 is the window's first row; the soft chin is a bump at 0.88.
    ys = np.arange(0, 201, dtype=float)
    xs = 100 + 0.3 * ys - 12 * np.exp(-0.5 * ((ys - 176) / 6.0) ** 2)
    pts = profile_points(ys, xs)
    assert pts["Pog_soft"][1] == pytest.approx(176, abs=3)


def test_0c_0d_recover_the_anchors_from_training_contour_labels():
    """Stage 0 geometry and the training labels agree: feeding training's ideal contour masks
    (as zone-net logits) through 0C post-processing and 0D puts each anchor on its landmark."""
    from cephnode.training import isbi
    from cephnode.training import zones as training_zones
    from cephnode.training.cache import canonical_image, to_canonical
    from cephnode.training.labels import derive_profile_mask
    from cephnode.inference.landmarks import ISBI_19
    from cephnode.inference.zones import SOURCES

    ix = {n: i for i, n in enumerate(ISBI_19)}
    errors = {k: [] for k in ("S", "N", "Me", "ANS", "Go", "Pog")}
    for case in isbi.load_cases("test1")[:8]:
        img = canonical_image(case.image_path)
        lm = to_canonical(case.mean, 968, 1200)
        prof = analyse_profile(derive_profile_mask(img, lm).astype(bool))
        boxes = zone_boxes(prof)
        per_zone = {z: zone_contours((training_zones.contour_label(lm, boxes[z], z).astype(np.float32) * 20 - 10)[None],
                                     z, boxes[z]) for z in ("z1", "z2", "z3", "z4")}
        merged = {}
        for cls, zs in SOURCES.items():
            for z in zs:
                if cls in per_zone[z]:
                    merged[cls] = per_zone[z][cls]
                    break
        lines = {k: band_midline(v) for k, v in merged.items()}
        found, _ = A.find_anchors(lines, np.array(prof.points["Prn"]), A.work_px_per_mm(968, 1200, (0.2, 0.2)),
                                  np.array(prof.points["Pog_soft"]))
        for k in errors:
            d = found[k] - lm[ix[k]]
            errors[k].append(np.hypot(d[0] * 968 / 512 * 0.2, d[1] * 1200 / 512 * 0.2))
    for k, v in errors.items():
        assert np.median(v) < 1.5, (k, v)
