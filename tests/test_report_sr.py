"""The TID 1500 Comprehensive SR: validated by dciodvfy and pixelmed, and read back with highdicom."""
from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cephnode.cephalometry.analysis import analyse
from cephnode.dicom_io import codes
from cephnode.dicom_io.outputs import build_outputs, instance_uid, series_uid
from cephnode.dicom_io.sr import PIXEL_CORNER_OFFSET
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case
from tests.support.validators import dciodvfy, dicom_sr_validator

# Why the remaining warnings are acceptable (pattern -> reason).
DCIODVFY_EXPLAINED = {
    r"Unrecognized defined term <99CEPHNODE> for value 1 of attribute <Coding Scheme Designator>":
        "our private coding scheme: dciodvfy only knows the standard designators; the scheme is "
        "declared in the Coding Scheme Identification Sequence as PS3.3 C.12.1.1.4 requires",
}
SR_VALIDATOR_EXPLAINED = {
    r'\(\S+,99CEPHNODE,"[^"]*"\): Content Item not in template':
        "coded evaluations named by private codes (landmark confidence level and source, caveats, "
        "classifications, status of omitted measurements): TID 1501 allows extra qualitative "
        "evaluations, pixelmed only knows the standard concept names",
    r'\(121402,DCM,"Normality"\): Content Item not in template':
        "normality as a qualitative evaluation of the group (pixelmed lists no concept names for them)",
}


def _sr_bytes(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def case():
    return isbi_report_case("001")


@pytest.fixture(scope="module")
def sr(case):
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name=PACK_NAME, pack_version=PACK_VERSION)
    return ds


@pytest.fixture(scope="module")
def sr_file(sr, tmp_path_factory):
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_sr_passes_dciodvfy(sr_file):
    report = dciodvfy(sr_file)
    assert "ComprehensiveSR" in report.output, report.output[-2000:]
    assert report.errors == [], "\n".join(report.errors)
    assert report.unexpected_warnings(DCIODVFY_EXPLAINED) == []


def test_sr_passes_pixelmed_dicom_sr_validator(sr_file):
    report = dicom_sr_validator(sr_file)
    assert "Found Root Template TID_1500" in report.output, report.output[-3000:]
    assert "Root Template Validation Complete" in report.output
    assert report.errors == [], "\n".join(report.errors[:20])
    assert report.unexpected_warnings(SR_VALIDATOR_EXPLAINED) == [], report.unexpected_warnings(SR_VALIDATOR_EXPLAINED)[:10]


def test_sr_joins_the_study_with_deterministic_uids(case, sr):
    src = case.source
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"   # Comprehensive SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    for attr in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate"):
        assert sr.get(attr) == src.get(attr), attr
    assert sr.SOPInstanceUID == instance_uid(src, PACK_VERSION, "sr")
    assert sr.SeriesInstanceUID == series_uid(src, PACK_VERSION, "sr")
    (again,) = build_outputs(src, case.result, kinds="sr", pack_name=PACK_NAME, pack_version=PACK_VERSION)
    assert again.SOPInstanceUID == sr.SOPInstanceUID and again.SeriesInstanceUID == sr.SeriesInstanceUID
    (other,) = build_outputs(src, case.result, kinds="sr", pack_name=PACK_NAME, pack_version="another")
    assert other.SOPInstanceUID != sr.SOPInstanceUID
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert codes.SCHEME in schemes


def _algorithm_items(group) -> dict[str, str]:
    found = {}
    for item in group[0].ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code in ("111001", "111003"):
            found[code] = item.TextValue
    return found


def test_round_trip_recovers_every_landmark_and_measurement_exactly(case, sr):
    back = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(BytesIO(_sr_bytes(sr))))
    report = back.content
    analysis = analyse(case.result)

    # Landmarks: one planar ROI group each, POINT on the source image, own tracking UID.
    rois = report.get_planar_roi_measurement_groups()
    available = [lm for lm in case.result.landmarks if lm.available]
    assert len(rois) == len(available) == 19
    seen = {}
    for g in rois:
        ft = g.finding_type
        name = codes.LANDMARK_BY_CODE[(ft.scheme_designator, ft.value)]
        assert g.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
        ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
        seen[name] = (g.roi.value[0], g.tracking_uid, g)
    assert len({uid for _, uid, _ in seen.values()}) == 19
    for lm in available:
        xy, _, g = seen[lm.name]
        # SCOORD is FL (float32) with (0, 0) at the pixel corner: exact at that precision.
        expected = np.float32([lm.x + PIXEL_CORNER_OFFSET, lm.y + PIXEL_CORNER_OFFSET])
        np.testing.assert_array_equal(np.float32(xy), expected)
        assert abs(float(xy[0]) - PIXEL_CORNER_OFFSET - lm.x) < 1e-3
        (conf,) = g.get_measurements()
        assert conf.value == lm.confidence
        assert _algorithm_items(g) == {"111001": f"cephnode CephTrace v4 ({PACK_NAME})", "111003": PACK_VERSION}
    assert seen["S"][2].finding_type.value == "42575006" and seen["N"][2].finding_type.scheme_designator == "FMA"

    # Measurements: exact values (FD), one INFERRED FROM POLYLINE each; omitted ones say why.
    groups = report.get_image_measurement_groups()
    values, lines, omitted = {}, {}, {}
    for g in groups:
        for m in g.get_measurements():
            key = codes.MEASUREMENT_KEY_BY_VALUE[m.name.value]
            values[key] = m.value
            (coords,) = m.referenced_coordinates
            assert coords.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            assert coords.RelationshipType == "INFERRED FROM"
            lines[key] = coords.value
            assert m.unit.scheme_designator == "UCUM"
        for qe in g.get_qualitative_evaluations():
            if qe.name.value in codes.MEASUREMENT_KEY_BY_VALUE and qe.value.value.startswith("NC-"):
                omitted[codes.MEASUREMENT_KEY_BY_VALUE[qe.name.value]] = qe.value.value
    assert values.keys() == {m.key for m in analysis.computed}
    for m in analysis.computed:
        assert values[m.key] == m.value, m.key                     # bit-exact float64
        np.testing.assert_array_equal(np.float32(lines[m.key]), np.float32(np.array(m.polyline) + PIXEL_CORNER_OFFSET))
    assert omitted == {m.key: "NC-LANDMARK" for m in analysis.omitted}

    # Classifications as coded evaluations.
    (cls,) = [g for g in groups if g.finding_type.value == codes.CLASSIFICATION.value]
    got = {qe.name.value: qe.value.value for qe in cls.get_qualitative_evaluations()}
    want = {codes.CLASSIFICATIONS[c.key].value: codes.CATEGORIES[c.category].value for c in analysis.classifications}
    assert got == want

    # Unavailable landmarks are listed, not silently dropped.
    unavailable = {codes.LANDMARK_BY_CODE[(g.finding_type.scheme_designator, g.finding_type.value)]
                   for g in groups if (g.finding_type.scheme_designator, g.finding_type.value) in codes.LANDMARK_BY_CODE}
    assert unavailable == {lm.name for lm in case.result.landmarks if not lm.available}

    # Image Library lists the source image (older OHIF builds need it).
    ds = pydicom.dcmread(BytesIO(_sr_bytes(sr)))
    library = [it for it in ds.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert library, "no Image Library"
    refs = [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for grp in library[0].ContentSequence for e in grp.ContentSequence if "ReferencedSOPSequence" in e]
    assert case.source.SOPInstanceUID in refs


def test_confidence_and_rule_based_landmarks_are_coded():
    case = isbi_report_case("002")
    pog = case.result.landmark("Pog")
    pog.level, pog.confidence = "low", 0.12
    sn = case.result.landmark("Sn")
    sn.predicted, sn.note = False, "Phase 0B profile geometry"
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name="p", pack_version="v")
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    by_name = {}
    for g in report.get_planar_roi_measurement_groups():
        name = codes.LANDMARK_BY_CODE[(g.finding_type.scheme_designator, g.finding_type.value)]
        by_name[name] = {qe.name.value: qe.value.value for qe in g.get_qualitative_evaluations()}
    assert by_name["Pog"][codes.LANDMARK_CONFIDENCE_LEVEL.value] == codes.CONFIDENCE_LEVELS["low"].value
    assert by_name["Sn"][codes.LANDMARK_SOURCE.value] == codes.LANDMARK_SOURCES["rule"].value
    assert by_name["S"][codes.LANDMARK_SOURCE.value] == codes.LANDMARK_SOURCES["model"].value
    caveats = set()
    for g in report.get_image_measurement_groups():
        for qe in g.get_qualitative_evaluations():
            if qe.name.value == codes.CAVEAT.value:
                caveats.add(qe.value.value)
    assert {"LOWCONF-POG", "RULE-SN"} <= caveats


def test_unknown_spacing_sr_has_no_mm_values_and_says_why():
    case = isbi_report_case("003", spacing=False)
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name="p", pack_version="v")
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    units, status = set(), {}
    for g in report.get_image_measurement_groups():
        for m in g.get_measurements():
            units.add(m.unit.value)
        for qe in g.get_qualitative_evaluations():
            if qe.value.value.startswith("NC-"):
                status[codes.MEASUREMENT_KEY_BY_VALUE[qe.name.value]] = qe.value.value
    assert "mm" not in units and {"deg", "%"} <= units
    assert status["mcnamara.lafh"] == "NC-SPACING"
    assert status["mcnamara.co_a"] == "NC-LANDMARK"


def test_unknown_kinds_are_refused(case):
    with pytest.raises(ValueError, match="unknown output kind"):
        build_outputs(case.source, case.result, kinds="sr,pdf", pack_name="p", pack_version="v")


def _without_creation_times(ds) -> bytes:
    """The SR's bytes with the build's own clock readings fixed (they differ between two builds)."""
    ds = pydicom.dcmread(BytesIO(_sr_bytes(ds)))
    fixed = {"DA": "20000101", "TM": "000000", "DT": "20000101000000"}
    clock = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime"}

    def fix(_, elem):
        if elem.keyword in clock:
            elem.value = fixed[elem.VR]

    ds.walk(fix)
    return _sr_bytes(ds)


def test_reports_share_nothing_and_a_rebuild_gives_the_same_bytes(case, sr):
    # sr.py shares codes and the source reference between the items of ONE report (speed);
    # building further reports must not touch an earlier one, and a rebuild must be identical.
    first = _sr_bytes(sr)
    other = isbi_report_case("042", annotator="junior")
    (other_sr,) = build_outputs(other.source, other.result, kinds=["sr"], pack_name=PACK_NAME,
                                pack_version=PACK_VERSION)
    (again,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name=PACK_NAME, pack_version=PACK_VERSION)
    assert _sr_bytes(sr) == first
    assert _without_creation_times(other_sr) != _without_creation_times(sr)
    assert _without_creation_times(again) == _without_creation_times(sr)
