"""Cephalometric analysis on geometry whose right answers are known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cephnode.cephalometry.analysis import DEFINITIONS, analyse
from cephnode.cephalometry.annotations import result_from_points
from cephnode.domain.landmarks import CANONICAL_25
from cephnode.domain.flags import Caveat, MeasurementFlag

# A plausible face looking RIGHT (x grows anteriorly, y downwards), in pixels of a 0.1 mm grid.
FACE_RIGHT = {
    "S": (300.0, 300.0), "N": (1000.0, 250.0), "Or": (900.0, 420.0), "Po": (180.0, 460.0),
    "ANS": (1030.0, 700.0), "PNS": (560.0, 720.0), "A": (1000.0, 780.0), "B": (960.0, 1180.0),
    "Pog": (980.0, 1330.0), "Gn": (950.0, 1400.0), "Me": (900.0, 1430.0), "Go": (380.0, 1130.0),
    "Ar": (290.0, 720.0), "Co": (300.0, 640.0), "U1_tip": (1060.0, 1000.0), "U1_root": (960.0, 770.0),
    "L1_tip": (1040.0, 980.0), "L1_root": (930.0, 1200.0), "UL": (1150.0, 930.0), "LL": (1130.0, 1090.0),
    "Pm": (1080.0, 1200.0), "Ba": (250.0, 820.0), "Pog_soft": (1090.0, 1350.0), "Sn": (1120.0, 760.0),
    "Prn": (1250.0, 640.0),
}
SPACING = (0.1, 0.1)


def make(points, *, spacing=SPACING, face="right", width=1400, height=1600, **overrides):
    r = result_from_points(points, width=width, height=height, pixel_spacing_mm=spacing, name="t", face=face)
    for lm in r.landmarks:
        for k, v in overrides.get(lm.name, {}).items():
            setattr(lm, k, v)
    return r


def values(analysis):
    return {m.key: m.value for m in analysis.measurements}


def test_a_right_angle_is_90_degrees():
    pts = dict(FACE_RIGHT)
    # S-N horizontal, A straight below N: the angle S-N-A is a right angle by construction.
    pts["S"], pts["N"], pts["A"] = (300.0, 250.0), (1000.0, 250.0), (1000.0, 780.0)
    m = analyse(make(pts)).get("steiner.sna")
    assert m.value == pytest.approx(90.0, abs=1e-9)
    assert m.unit == "deg" and m.landmarks == ("S", "N", "A")
    assert m.deviation_sd == pytest.approx((90.0 - 82.0) / 2.0)
    assert m.status == "above" and m.severity == 2


def test_a_point_5mm_ahead_of_a_line_is_plus_5mm():
    pts = dict(FACE_RIGHT)
    pts["N"], pts["A"] = (1000.0, 250.0), (1000.0, 780.0)       # N-A vertical at x = 1000 px
    pts["U1_tip"] = (1050.0, 1000.0)                               # 50 px * 0.1 mm = 5 mm anterior
    m = analyse(make(pts)).get("steiner.u1_na_mm")
    assert m.value == pytest.approx(5.0, abs=1e-9) and m.unit == "mm"
    pts["U1_tip"] = (950.0, 1000.0)                                # behind the line
    assert analyse(make(pts)).get("steiner.u1_na_mm").value == pytest.approx(-5.0, abs=1e-9)


def test_non_square_pixels_use_each_axis_spacing():
    pts = dict(FACE_RIGHT)
    pts["N"], pts["A"] = (1000.0, 250.0), (1000.0, 780.0)
    pts["U1_tip"] = (1025.0, 1000.0)                               # 25 columns * 0.2 mm = 5 mm
    m = analyse(make(pts, spacing=(0.1, 0.2))).get("steiner.u1_na_mm")
    assert m.value == pytest.approx(5.0, abs=1e-9)


def test_mirrored_and_turned_inputs_give_the_same_values():
    base = values(analyse(make(FACE_RIGHT)))
    w, h = 1400, 1600
    mirrored = {k: (w - 1 - x, y) for k, (x, y) in FACE_RIGHT.items()}
    turned = {k: (y, w - 1 - x) for k, (x, y) in FACE_RIGHT.items()}   # np.rot90: face now looks up
    m = values(analyse(make(mirrored, face="left")))
    # the turn swaps axes, so swap the spacing too (kept square here) and the image size
    t = values(analyse(make(turned, width=h, height=w)))
    assert base.keys() == m.keys() == t.keys()
    for key, v in base.items():
        assert v is not None, key
        assert m[key] == pytest.approx(v, abs=1e-9), key
        assert t[key] == pytest.approx(v, abs=1e-9), key


def test_signs_follow_the_face_not_the_image():
    pts = dict(FACE_RIGHT)
    pts["A"] = (1040.0, 780.0)            # A well ahead of N-Pog: convex profile
    a = analyse(make(pts))
    assert a.get("downs.convexity").value > 0
    assert a.get("ricketts.convexity").value > 0
    mirrored = {k: (1399 - x, y) for k, (x, y) in pts.items()}
    b = analyse(make(mirrored, face="left"))
    assert b.get("downs.convexity").value == pytest.approx(a.get("downs.convexity").value)


def test_unknown_spacing_omits_mm_values_with_the_reason_and_keeps_angles():
    a = analyse(make(FACE_RIGHT, spacing=None))
    assert not a.spacing_known
    mm = [m for m in a.measurements if m.unit == "mm"]
    assert mm and all(m.value is None and "pixel spacing unknown" in m.omitted_reason for m in mm)
    assert all(MeasurementFlag(Caveat.SPACING_UNKNOWN) in m.flags for m in mm)
    angles = [m for m in a.measurements if m.unit in ("deg", "%")]
    assert angles and all(m.value is not None and MeasurementFlag(Caveat.SQUARE_PIXELS_ASSUMED) in m.flags for m in angles)
    with_spacing = analyse(make(FACE_RIGHT))
    assert a.get("steiner.sna").value == pytest.approx(with_spacing.get("steiner.sna").value)


def test_unavailable_landmarks_leave_their_measurements_out_with_the_reason():
    pts = {k: v for k, v in FACE_RIGHT.items() if k not in ("Co", "Ba")}
    a = analyse(make(pts))
    for key in ("mcnamara.co_a", "mcnamara.co_gn", "mcnamara.co_difference", "ricketts.cranial_deflection"):
        m = a.get(key)
        assert m.value is None and "landmark unavailable" in m.omitted_reason
        assert any(f.caveat is Caveat.UNAVAILABLE for f in m.flags)
    assert a.get("steiner.sna").value is not None
    assert {m.key for m in a.computed} | {m.key for m in a.omitted} == {d.key for d in DEFINITIONS}


def test_low_confidence_and_rule_based_landmarks_are_flagged():
    r = make(FACE_RIGHT, Pog={"level": "low", "confidence": 0.1}, Prn={"predicted": False})
    a = analyse(r)
    assert MeasurementFlag(Caveat.LOW_CONFIDENCE, "Pog") in a.get("downs.facial_angle").flags
    assert MeasurementFlag(Caveat.RULE_BASED, "Prn") in a.get("ricketts.ll_eline").flags
    assert not a.get("steiner.sna").flags


def test_composite_measurements_agree_with_their_parts():
    a = analyse(make(FACE_RIGHT))
    v = values(a)
    assert v["steiner.anb"] == pytest.approx(v["steiner.sna"] - v["steiner.snb"])
    assert v["tweed.fmia"] == pytest.approx(180 - v["tweed.fma"] - v["tweed.impa"])
    assert v["bjork.sum"] == pytest.approx(v["bjork.saddle"] + v["bjork.articular"] + v["bjork.gonial"])
    assert v["mcnamara.co_difference"] == pytest.approx(v["mcnamara.co_gn"] - v["mcnamara.co_a"])
    s_go = math.dist(FACE_RIGHT["S"], FACE_RIGHT["Go"])
    n_me = math.dist(FACE_RIGHT["N"], FACE_RIGHT["Me"])
    assert v["bjork.jarabak_ratio"] == pytest.approx(100 * s_go / n_me)
    assert v["holdaway.chin_thickness"] == pytest.approx(0.1 * math.dist(FACE_RIGHT["Pog"], FACE_RIGHT["Pog_soft"]))


@pytest.mark.parametrize("anb_shift, expected", [(0.0, "Class I"), (60.0, "Class II"), (-60.0, "Class III")])
def test_skeletal_class_follows_anb(anb_shift, expected):
    pts = dict(FACE_RIGHT)
    bx, by = pts["B"]
    pts["B"] = (bx - anb_shift, by)       # B moved back -> larger ANB
    a = analyse(make(pts))
    anb = a.get("steiner.anb").value
    c = {c.key: c for c in a.classifications}["skeletal_class"]
    assert c.value == pytest.approx(anb)
    assert c.category == expected, anb


def test_vertical_pattern_bands():
    a = analyse(make(FACE_RIGHT))
    c = {c.key: c for c in a.classifications}
    fma = a.get("tweed.fma").value
    assert c["vertical_fma"].category == ("hypodivergent" if fma < 20 else "hyperdivergent" if fma > 30 else "normodivergent")
    snmp = a.get("vertical.sn_mp").value
    assert c["vertical_snmp"].category == ("hypodivergent" if snmp < 27 else "hyperdivergent" if snmp > 37 else "normodivergent")
    # Steepen the mandibular plane a lot: every vertical classification must turn hyperdivergent.
    pts = dict(FACE_RIGHT)
    pts["Go"] = (380.0, 700.0)
    steep = {c.key: c for c in analyse(make(pts)).classifications}
    assert steep["vertical_fma"].category == "hyperdivergent"
    assert steep["vertical_snmp"].category == "hyperdivergent"
    assert steep["vertical_jarabak"].category == "hyperdivergent"


def test_classification_without_its_basis_says_why():
    pts = {k: v for k, v in FACE_RIGHT.items() if k != "Or"}
    c = {c.key: c for c in analyse(make(pts)).classifications}["vertical_fma"]
    assert c.category is None and "Or" in c.omitted_reason


def test_polylines_run_through_the_landmarks_they_measure():
    a = analyse(make(FACE_RIGHT))
    sna = a.get("steiner.sna")
    np.testing.assert_allclose(sna.polyline, [FACE_RIGHT["S"], FACE_RIGHT["N"], FACE_RIGHT["A"]], atol=1e-9)
    dist = a.get("steiner.u1_na_mm")
    # line N-A, then the foot of the perpendicular, then the U1 tip itself
    np.testing.assert_allclose(dist.polyline[-1], FACE_RIGHT["U1_tip"], atol=1e-9)
    for m in a.computed:
        assert len(m.polyline) >= 2, m.key


def test_every_canonical_landmark_is_known_to_the_builder():
    r = make(FACE_RIGHT)
    assert [lm.name for lm in r.landmarks] == list(CANONICAL_25)


def test_coincident_landmarks_leave_the_measurement_out_instead_of_dividing_by_zero():
    pts = dict(FACE_RIGHT)
    pts["Pog_soft"] = pts["Sn"]            # Sn-Pog_soft spans no line
    a = analyse(make(pts))
    for key in ("burstone.ul_snpog", "burstone.ll_snpog"):
        m = a.get(key)
        assert m.value is None and "degenerate" in m.omitted_reason and MeasurementFlag(Caveat.DEGENERATE) in m.flags
    assert all(np.isfinite(m.value) for m in a.computed)


def test_flags_are_typed_and_read_back_from_their_text():
    flag = MeasurementFlag(Caveat.LOW_CONFIDENCE, "Pog")
    assert str(flag) == "low-confidence:Pog" and MeasurementFlag.parse(str(flag)) == flag
    assert MeasurementFlag.parse("spacing-unknown") == MeasurementFlag(Caveat.SPACING_UNKNOWN)
    assert flag.caveat.doubtful and not Caveat.UNAVAILABLE.doubtful
    with pytest.raises(ValueError):
        MeasurementFlag(Caveat.LOW_CONFIDENCE)          # a landmark caveat names its landmark
    with pytest.raises(ValueError):
        MeasurementFlag.parse("blurry")
