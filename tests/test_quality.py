"""Pose verification and the quality gate on real films and real non-cephalometric images.

A wrong pose (forced, or from a wrong DICOM tag) must not reach the archive as fact: the
verification corrects what it may correct, and the gate fails what it cannot; a failed
tracing produces an SR with the verdict and no measurement values (dciodvfy + pixelmed)."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest

from cephnode.cephalometry.analysis import analyse
from cephnode.cephalometry.annotations import result_from_points
from cephnode.dicom_io import codes
from cephnode.dicom_io.outputs import build_outputs
from cephnode.domain.landmarks import ISBI_19
from cephnode.inference.pipeline import Pipeline
from cephnode.inference.quality import judge
from tests.support.dicomgen import make_dx, read_grey
from tests.support.nonceph import non_ceph_images
from tests.support.validators import dciodvfy, dicom_sr_validator
from tests.test_report_sr import DCIODVFY_EXPLAINED, SR_VALIDATOR_EXPLAINED
from cephnode.training import deviceshift, isbi
from cephnode.training.evaluate import radial_errors_mm
from cephnode.domain.flags import Caveat, MeasurementFlag


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(None, device="cpu", threads=1)


@pytest.fixture(scope="module")
def film():
    case = next(c for c in isbi.load_cases("test1") if c.case_id == "151")
    return read_grey(case.image_path), case.mean


def _mre(result, truth) -> float:
    pred = np.array([[result.landmark(n).x, result.landmark(n).y] for n in ISBI_19], float)
    return float(np.nanmean(radial_errors_mm(pred, truth, isbi.pixel_spacing_mm())))


def test_forced_wrong_pose_is_failed_not_delivered(pipe, film):
    img, truth = film
    right = pipe.run(img, pixel_spacing_mm=isbi.pixel_spacing_mm(), orientation=(0, True))
    assert right.qc.verdict == "pass", right.qc.reasons
    for pose in [(0, False), (2, True), (3, False), (1, True)]:
        r = pipe.run(img, pixel_spacing_mm=isbi.pixel_spacing_mm(), orientation=pose)
        assert r.orientation.source == "given" and (r.orientation.rotation_k, r.orientation.flipped) == pose
        assert _mre(r, truth) > 20                        # it really is a wrong tracing ...
        assert r.qc.verdict == "fail", (pose, r.qc)       # ... and the gate says so


def test_wrong_dicom_orientation_is_overturned_by_verification(pipe, film):
    img, truth = film
    # ISBI films face right: ("A", "F"). Claim the film is upside down and mirrored.
    r = pipe.run(img, pixel_spacing_mm=isbi.pixel_spacing_mm(), patient_orientation=("P", "H"))
    o = r.orientation
    assert o.source == "dicom" and o.verification == "overturned" and o.hypotheses_tried >= 2
    assert (o.rotation_k, o.flipped, o.inverted) == (0, True, False)
    assert _mre(r, truth) < 3.0
    assert r.qc.verdict == "review" and "pose" in r.qc.codes
    assert r.timings_ms["pose_verification"] > 0


def test_inverted_turned_film_found_in_its_pose_and_polarity(pipe, film):
    img, truth = film
    shifted, pts, spacing = deviceshift.apply(img, truth, isbi.pixel_spacing_mm(), deviceshift.PRESETS[2], seed=1)
    turned = np.ascontiguousarray(np.rot90(shifted, 1))            # 90 degrees counter-clockwise
    r = pipe.run(turned, pixel_spacing_mm=(spacing[1], spacing[0]))
    o = r.orientation
    assert (o.rotation_k, o.flipped, o.inverted) == (3, True, True)
    assert r.qc.verdict in ("pass", "review") and r.qc.signals["mean_confidence"] > 0.5


@pytest.mark.parametrize("kind", ["blank", "texture", "chest", "hand"])
def test_non_cephalometric_image_fails(pipe, kind):
    r = pipe.run(non_ceph_images()[kind], pixel_spacing_mm=(0.2, 0.2), name=kind)
    assert r.qc.verdict == "fail", r.qc
    assert r.qc.doubtful_landmarks == []


def _content_items(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _content_items(item.ContentSequence)


def test_failed_tracing_sr_gsps_and_sheet_carry_the_warning_and_no_values(pipe, tmp_path):
    grey = non_ceph_images()["chest"]
    source = make_dx(grey, pixel_spacing_mm=(0.2, 0.2))
    r = pipe.run(grey, pixel_spacing_mm=(0.2, 0.2), patient_orientation=("A", "F"))
    assert r.qc.verdict == "fail"
    built = {str(ds.Modality): ds for ds in build_outputs(source, r, pack_name="p", pack_version="1").values()}
    assert set(built) == {"SR", "PR", "OT"}          # the SEG (a tracing) is left out
    sr = built["SR"]
    items = list(_content_items(sr.ContentSequence))
    # (the image library's acquisition context, e.g. the source's pixel spacing, is not a result)
    results = [i for i in items if i.RelationshipType != "HAS ACQ CONTEXT"]
    assert not [i for i in results if i.ValueType == "NUM"], "a failed tracing must carry no measurement values"
    assert not [i for i in items if i.ValueType == "SCOORD"], "nor any landmark position"
    values = {i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE"}
    assert codes.QC_VERDICTS["fail"].value in values and codes.QC_REASONS["confidence"].value in values
    _assert_valid_sr(sr, tmp_path / "sr.dcm")
    gsps = built["PR"]
    texts = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert texts and texts[0].startswith("AUTOMATED TRACING FAILED QUALITY CONTROL")
    assert not [a for a in gsps.GraphicAnnotationSequence if "GraphicObjectSequence" in a]
    sheet = pydicom.dcmread(BytesIO(_bytes(built["OT"]))).pixel_array
    w = grey.shape[1] * sheet.shape[0] // grey.shape[0]          # the radiograph's width on the sheet
    banner = np.all(sheet[:, w:] == (250, 200, 200), axis=-1)   # the warning panel replaces the table
    assert banner.sum() > 1000
    left = sheet[:, :w].astype(int)
    assert np.abs(left[..., 0] - left[..., 1]).max() <= 1      # the radiograph is drawn grey: no tracing


def _assert_valid_sr(sr, path) -> None:
    """dciodvfy and pixelmed's DicomSRValidator both find nothing wrong with the SR."""
    sr.save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert report.errors == [] and report.unexpected_warnings(DCIODVFY_EXPLAINED) == [], report.output[-2000:]
    report = dicom_sr_validator(path)
    assert "Root Template Validation Complete" in report.output and report.errors == [], report.output[-3000:]
    assert report.unexpected_warnings(SR_VALIDATOR_EXPLAINED) == []


def _bytes(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_review_flags_the_doubtful_landmark_and_its_measurements(tmp_path):
    case = next(c for c in isbi.load_cases("train") if c.case_id == "001")
    pts = dict(zip(ISBI_19, map(tuple, case.mean)))
    clean = result_from_points(pts, width=968, height=1200, pixel_spacing_mm=isbi.pixel_spacing_mm(),
                               name="001", face="right")
    assert judge(clean).verdict == "pass", judge(clean).reasons
    go = pts["Go"]
    pts["Go"] = (go[0] - 0, go[1] - 150)          # gonion 30 mm up the ramus
    moved = result_from_points(pts, width=968, height=1200, pixel_spacing_mm=isbi.pixel_spacing_mm(),
                               name="001", face="right")
    moved.qc = judge(moved)
    assert moved.qc.verdict == "review" and "Go" in moved.qc.doubtful_landmarks, moved.qc
    flagged = [m.key for m in analyse(moved).measurements if MeasurementFlag(Caveat.QC_DOUBTFUL, "Go") in m.flags]
    assert flagged and all("Go" in m.landmarks for m in analyse(moved).measurements if m.key in flagged)
    source = make_dx(read_grey(case.image_path), pixel_spacing_mm=isbi.pixel_spacing_mm())
    (sr,) = build_outputs(source, moved, kinds="sr", pack_name="p", pack_version="1").values()
    values = {i.ConceptCodeSequence[0].CodeValue for i in _content_items(sr.ContentSequence) if i.ValueType == "CODE"}
    assert {"QC-REVIEW", "QCDOUBT-GO"} <= values
    assert len([i for i in _content_items(sr.ContentSequence)
                if i.ValueType == "NUM" and i.RelationshipType != "HAS ACQ CONTEXT"]) > 30   # still delivered
    _assert_valid_sr(sr, tmp_path / "review.dcm")


def test_device_shift_is_deterministic_and_moves_the_points_with_the_pixels(film):
    img, truth = film
    for shift in deviceshift.PRESETS:
        a, pa, sa = deviceshift.apply(img, truth, isbi.pixel_spacing_mm(), shift, seed=3)
        b, pb, sb = deviceshift.apply(img, truth, isbi.pixel_spacing_mm(), shift, seed=3)
        assert np.array_equal(a, b) and np.array_equal(pa, pb) and sa == sb
        # the physical size of the S-N distance is kept whatever the resampling and the field
        d0 = radial_errors_mm(truth[0], truth[1], isbi.pixel_spacing_mm())
        d1 = radial_errors_mm(pa[0], pa[1], sa)
        assert abs(float(d0) - float(d1)) < 0.3, shift.name
    crop = deviceshift.Shift("c", field=(0.1, 0.0, 0.2, 0.0))
    out, p, _ = deviceshift.apply(img, truth, isbi.pixel_spacing_mm(), crop)
    assert out.shape == (1200 - 120, 968 - 194)
    np.testing.assert_allclose(p, truth - [194, 120])
