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
from cephnode.dicom_io.sr import CORNERSTONE_3D_TAG, PIXEL_CORNER_OFFSET
from cephnode.dicom_io.sr_labels import OFF_FILM_MARGIN, RADII, label_positions, tool_text
from cephnode.dicom_io.sr_layout import (ANGLE, CHAR_W, COBB_ANGLE, LENGTH, LINE_H, NOMINAL_SCREEN_HEIGHT,
                                         measurement_drawings, tool_value)
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case
from tests.support.validators import dciodvfy, dicom_sr_validator

# Why the remaining warnings are acceptable (pattern -> reason).
DCIODVFY_EXPLAINED = {
    r"Unrecognized defined term <99CEPHNODE> for value 1 of attribute <Coding Scheme Designator>":
        "our private coding scheme: dciodvfy only knows the standard designators; the scheme is "
        "declared in the Coding Scheme Identification Sequence as PS3.3 C.12.1.1.4 requires",
    r"Unrecognized defined term <99CS3D> for value 1 of attribute <Coding Scheme Designator>":
        "cornerstone's private scheme, which names the label positions OHIF reads (TextPosition); "
        "declared in the Coding Scheme Identification Sequence too",
}
SR_VALIDATOR_EXPLAINED = {
    r'\(121106,DCM,"Comment"\): Content Item not in template':
        "the landmark's name as a Comment in its group: TID 1501 has no row for it, pixelmed "
        "reports the extra item; OHIF labels the point with it (docs/report.md)",
    r'\(\S+,99CEPHNODE,"[^"]*"\): Content Item not in template':
        "coded evaluations named by private codes (landmark confidence level and source, caveats, "
        "classifications, status of omitted measurements): TID 1501 allows extra qualitative "
        "evaluations, pixelmed only knows the standard concept names; and the caveats that "
        "qualify an omitted measurement in the report-level Qualitative Evaluations",
    r'\(121402,DCM,"Normality"\): Content Item not in template':
        "normality as a qualitative evaluation of the group (pixelmed lists no concept names for them)",
    r'\(TextPosition,99CS3D,"Text Annotation Position"\): Content Item not in template':
        "where a tracking viewer writes the group's label: cornerstone's convention, read by OHIF "
        "(dicom_io/sr_labels.py); TID 1501 has no row for a label position",
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
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
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
    (again,) = build_outputs(src, case.result, kinds="sr", pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    assert again.SOPInstanceUID == sr.SOPInstanceUID and again.SeriesInstanceUID == sr.SeriesInstanceUID
    (other,) = build_outputs(src, case.result, kinds="sr", pack_name=PACK_NAME, pack_version="another").values()
    assert other.SOPInstanceUID != sr.SOPInstanceUID
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert {codes.SCHEME, codes.CS3D_SCHEME} <= schemes


def _algorithm_items(group) -> dict[str, str]:
    found = {}
    for item in group[0].ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code in ("111001", "111003"):
            found[code] = item.TextValue
    return found


def _report_evaluations(ds) -> dict[str, tuple[str, list[str]]]:
    """The report-level Qualitative Evaluations: concept code -> (value code, [modifier values])."""
    (container,) = [it for it in ds.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert container.ConceptNameCodeSequence[0].CodingSchemeDesignator == "UMLS"
    found = {}
    for it in container.ContentSequence:
        assert it.ValueType == "CODE" and it.RelationshipType == "CONTAINS"
        mods = [m.ConceptCodeSequence[0].CodeValue for m in it.get("ContentSequence", [])]
        found[it.ConceptNameCodeSequence[0].CodeValue] = (it.ConceptCodeSequence[0].CodeValue, mods)
    return found


def _comments(group) -> list[str]:
    return [it.TextValue for it in group[0].ContentSequence
            if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value]


def _text_positions(group) -> list[tuple[float, float]]:
    return [tuple(it.GraphicData) for it in group[0].ContentSequence
            if it.ValueType == "SCOORD" and it.ConceptNameCodeSequence[0].CodeValue == codes.TEXT_POSITION.value
            and it.GraphicType == "POINT"]


def _landmark_groups(report) -> dict[str, object]:
    out = {}
    for g in report.get_image_measurement_groups():
        ft = g.finding_type
        if ft is not None and (ft.scheme_designator, ft.value) in codes.LANDMARK_BY_CODE:
            out[codes.LANDMARK_BY_CODE[(ft.scheme_designator, ft.value)]] = g
    return out


def test_round_trip_recovers_every_landmark_and_measurement_exactly(case, sr):
    ds = pydicom.dcmread(BytesIO(_sr_bytes(sr)))
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    analysis = analyse(case.result)
    rows, cols = int(case.source.Rows), int(case.source.Columns)
    drawn = measurement_drawings(case.result, analysis, cols, rows)

    # Landmarks: one group each, its confidence INFERRED FROM a POINT on the source image, own
    # tracking UID, named by a Comment (what OHIF writes next to the point).
    lms = _landmark_groups(report)
    available = [lm for lm in case.result.landmarks if lm.available]
    assert set(lms) == {lm.name for lm in available} and len(available) == 19
    assert len({g.tracking_uid for g in lms.values()}) == 19
    for lm in available:
        g = lms[lm.name]
        (conf,) = g.get_measurements()
        assert conf.name.value == codes.LANDMARK_CONFIDENCE.value and conf.value == lm.confidence
        (point,) = conf.referenced_coordinates
        assert point.graphic_type == hd.sr.GraphicTypeValues.POINT and point.RelationshipType == "INFERRED FROM"
        ref = point.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
        # SCOORD is FL (float32) with (0, 0) at the pixel corner: exact at that precision.
        expected = np.float32([lm.x + PIXEL_CORNER_OFFSET, lm.y + PIXEL_CORNER_OFFSET])
        np.testing.assert_array_equal(np.float32(point.value[0]), expected)
        assert _comments(g) == [lm.name]
        assert _algorithm_items(g) == {"111001": f"cephnode CephTrace v4 ({PACK_NAME})", "111003": PACK_VERSION}
        # OHIF takes it over as an arrow labelled with the Comment, the label where the SR says
        assert g.tracking_identifier == f"{CORNERSTONE_3D_TAG}:ArrowAnnotate:Landmark {lm.name}"
        (at,) = _text_positions(g)
        assert 0 <= at[0] <= cols and 0 <= at[1] <= rows
    assert lms["S"].finding_type.value == "42575006" and lms["N"].finding_type.scheme_designator == "FMA"

    # Measurements: exact values (FD), one INFERRED FROM POLYLINE each.
    values, lines, groups = {}, {}, {}
    for g in report.get_image_measurement_groups():
        for m in g.get_measurements():
            if m.name.value == codes.LANDMARK_CONFIDENCE.value:
                continue
            key = codes.MEASUREMENT_KEY_BY_VALUE[m.name.value]
            values[key] = m.value
            (coords,) = m.referenced_coordinates
            assert coords.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            assert coords.RelationshipType == "INFERRED FROM"
            lines[key] = coords.value
            assert m.unit.scheme_designator == "UCUM"
            # the measurement is the group's finding: OHIF lists a tracked one under its meaning
            assert (g.finding_type.value, g.finding_type.meaning) == (m.name.value, m.name.meaning)
            groups[key] = g
    assert values.keys() == {m.key for m in analysis.computed}
    for m in analysis.computed:
        assert values[m.key] == m.value, m.key                     # bit-exact float64
        # drawn where dicom_io.sr_layout put it, and through every landmark it was measured on
        np.testing.assert_array_equal(np.float32(lines[m.key]), np.float32(drawn[m.key].points + PIXEL_CORNER_OFFSET))
        # tracked as an OHIF tool when one fits and shows this very value, with its label's place
        tool = drawn[m.key].tool
        if tool is None:
            assert ":" not in groups[m.key].tracking_identifier and _text_positions(groups[m.key]) == []
        else:
            assert groups[m.key].tracking_identifier.startswith(f"{CORNERSTONE_3D_TAG}:{tool}:")
            assert len(groups[m.key].tracking_identifier) <= 64
            assert abs(tool_value(tool, lines[m.key], case.result.pixel_spacing_mm) - m.value) < 0.01, m.key
            assert len(_text_positions(groups[m.key])) == 1
        for p in np.array(m.polyline) + PIXEL_CORNER_OFFSET:
            if 0 <= p[0] <= cols and 0 <= p[1] <= rows:
                assert _distance_to_polyline(p, lines[m.key]) < 1e-2, (m.key, p)

    # Everything without geometry is in the report-level Qualitative Evaluations.
    evaluations = _report_evaluations(ds)
    omitted = {codes.MEASUREMENT_KEY_BY_VALUE[k]: v for k, (v, _) in evaluations.items()
               if k in codes.MEASUREMENT_KEY_BY_VALUE}
    assert omitted == {m.key: "NC-LANDMARK" for m in analysis.omitted}
    for m in analysis.omitted:   # and each keeps its caveats (which landmark was missing)
        want = [codes.caveat_code(f).value for f in m.flags]
        assert evaluations[codes.measurement_code(m.key, m.name).value][1] == want
    want = {codes.CLASSIFICATIONS[c.key].value: codes.CATEGORIES[c.category].value for c in analysis.classifications}
    assert {k: evaluations[k][0] for k in want} == want
    unavailable = {codes.LANDMARK_BY_CODE[(c.scheme_designator, c.value)] for c in codes.LANDMARKS.values()
                   if c.value in evaluations and evaluations[c.value][0] == codes.LANDMARK_SOURCES["unavailable"].value}
    assert unavailable == {lm.name for lm in case.result.landmarks if not lm.available}
    assert evaluations[codes.TRACING_STATUS.value][0] == codes.TRACING_STATUSES[False].value

    # Image Library lists the source image (older OHIF builds need it).
    library = [it for it in ds.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert library, "no Image Library"
    refs = [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for grp in library[0].ContentSequence for e in grp.ContentSequence if "ReferencedSOPSequence" in e]
    assert case.source.SOPInstanceUID in refs


def test_a_tracking_viewer_shows_the_sr_value_never_a_wrong_one():
    # OHIF's tools measure a tracked drawing again and show no sign: a measurement becomes a tool
    # only when the tool's reading of the drawing is the SR's value. Over eight films every tool
    # is used, negative values (a Class III ANB, A behind N-perp) never are, and neither is what
    # no tool measures (Bjork sum, the Jarabak ratio).
    used: dict[str | None, int] = {}
    for cid in ("001", "002", "003", "004", "005", "006", "007", "008"):
        case = isbi_report_case(cid)
        analysis = analyse(case.result)
        rows, cols = int(case.source.Rows), int(case.source.Columns)
        drawn = measurement_drawings(case.result, analysis, cols, rows)
        for m in analysis.computed:
            d = drawn[m.key]
            used[d.tool] = used.get(d.tool, 0) + 1
            if m.key in ("bjork.sum", "bjork.jarabak_ratio") or m.value < 0:
                assert d.tool is None, (cid, m.key, m.value)
            if d.tool is None:
                continue
            pts = d.points + PIXEL_CORNER_OFFSET
            assert abs(tool_value(d.tool, pts, case.result.pixel_spacing_mm) - m.value) <= 0.005, (cid, m.key)
            assert len(pts) == 4 or (d.tool == LENGTH and len(pts) == 2)
            if d.tool == ANGLE:
                assert np.array_equal(pts[1], pts[2])                   # [a, v, v, b]
            assert pts.min() >= 0 and pts[:, 0].max() <= cols and pts[:, 1].max() <= rows
    assert used[ANGLE] > 50 and used[COBB_ANGLE] > 10 and used[LENGTH] > 50 and used[None] > 20, used


def test_tracked_labels_are_placed_apart_beside_what_they_name():
    # Where OHIF writes each label once it tracks the SR (dicom_io/sr_labels.py), estimated at the
    # fit-to-window scale: on eight films no two boxes overlap by more than a sliver, every box is
    # on the film, and each landmark's name is beside its point (test_viewer_ohif measures the
    # same on OHIF's screen).
    for cid in ("001", "002", "003", "004", "005", "006", "007", "008"):
        case = isbi_report_case(cid)
        analysis = analyse(case.result)
        rows, cols = int(case.source.Rows), int(case.source.Columns)
        drawn = measurement_drawings(case.result, analysis, cols, rows)
        landmark_at, measurement_at = label_positions(case.result, analysis, drawn, cols, rows)
        lms = {lm.name: lm for lm in case.result.landmarks if lm.available}
        assert set(landmark_at) == set(lms)
        assert set(measurement_at) == {m.key for m in analysis.computed if drawn[m.key].tool is not None}
        scale = rows / NOMINAL_SCREEN_HEIGHT
        texts = {**{n: n for n in landmark_at},
                 **{m.key: tool_text(drawn[m.key].tool, m.value, m.unit) for m in analysis.computed if m.key in measurement_at}}
        at = {**landmark_at, **measurement_at}
        boxes = np.array([[*at[k], at[k][0] + len(t) * CHAR_W * scale, at[k][1] + LINE_H * scale] for k, t in texts.items()])
        # on the film with a margin for the viewer's slightly larger boxes (a name below Me ran off
        # the screen when being off the film was only a cost)
        m = OFF_FILM_MARGIN * scale
        assert boxes[:, :2].min() >= m and boxes[:, 2].max() <= cols - m and boxes[:, 3].max() <= rows - m, cid
        w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        overlap = np.triu(np.clip(w, 0, None) * np.clip(h, 0, None), 1).sum()
        assert overlap / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum() < 0.01, cid
        for name, (x, y) in landmark_at.items():
            p = np.array([lms[name].x + PIXEL_CORNER_OFFSET, lms[name].y + PIXEL_CORNER_OFFSET])
            centre = np.array([x + len(name) * CHAR_W * scale / 2, y + LINE_H * scale / 2])
            assert np.hypot(*(centre - p)) < (max(RADII) + 40) * scale, (cid, name)
    # and a rebuild puts them in the same places
    again = label_positions(case.result, analysis, measurement_drawings(case.result, analysis, cols, rows), cols, rows)
    assert all(np.array_equal(again[0][k], landmark_at[k]) for k in landmark_at)


def _distance_to_polyline(p, line) -> float:
    line = np.asarray(line, dtype=float)
    a, b = line[:-1], line[1:]
    d = b - a
    t = np.clip(((p - a) * d).sum(axis=1) / np.maximum((d * d).sum(axis=1), 1e-12), 0, 1)
    return float(np.hypot(*(a + t[:, None] * d - p).T).min())


def test_every_line_stays_on_the_film(case, sr):
    # Two nearly parallel lines (SN-MP, FMA) meet far behind the head; drawn through that point
    # they would run off the image. Every SCOORD point lies on the film (pixel-corner frame).
    rows, cols = int(case.source.Rows), int(case.source.Columns)

    def scoords(items):
        return [i for it in items for i in ([it] if it.ValueType == "SCOORD" else []) + scoords(it.get("ContentSequence", []))]

    points = np.concatenate([np.reshape(s.GraphicData, (-1, 2)) for s in scoords(sr.ContentSequence)])
    assert len(points) > 100
    assert points.min() >= 0 and points[:, 0].max() <= cols and points[:, 1].max() <= rows


def test_every_imaging_measurement_group_has_geometry(sr):
    # OHIF 3.13 reads the first coordinate of every group in Imaging Measurements and stops the
    # whole SR at one without; it labels a landmark by its Comment, so that comes first.
    (container,) = [it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "126010"]

    def scoords(items):
        return [i for it in items for i in ([it] if it.ValueType == "SCOORD" else []) + scoords(it.get("ContentSequence", []))]

    assert len(container.ContentSequence) == 19 + len(analyse(isbi_report_case("001").result).computed)
    for group in container.ContentSequence:
        found = scoords(group.ContentSequence)
        assert found, group.ContentSequence[0].TextValue
        assert all(s.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in found)


def test_confidence_and_rule_based_landmarks_are_coded():
    case = isbi_report_case("002")
    pog = case.result.landmark("Pog")
    pog.level, pog.confidence = "low", 0.12
    sn = case.result.landmark("Sn")
    sn.predicted, sn.note = False, "Phase 0B profile geometry"
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name="p", pack_version="v").values()
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    by_name = {name: {qe.name.value: qe.value.value for qe in g.get_qualitative_evaluations()}
               for name, g in _landmark_groups(report).items()}
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
    (ds,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name="p", pack_version="v").values()
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    units = {m.unit.value for g in report.get_image_measurement_groups() for m in g.get_measurements()}
    status = {codes.MEASUREMENT_KEY_BY_VALUE[k]: v for k, (v, _) in _report_evaluations(ds).items()
              if k in codes.MEASUREMENT_KEY_BY_VALUE}
    assert "mm" not in units and {"deg", "%"} <= units
    assert status["mcnamara.lafh"] == "NC-SPACING"
    assert status["mcnamara.co_a"] == "NC-LANDMARK"


def test_unknown_kinds_are_refused(case):
    with pytest.raises(ValueError, match="unknown output kind"):
        build_outputs(case.source, case.result, kinds="sr,pdf", pack_name="p", pack_version="v").values()


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
                                pack_version=PACK_VERSION).values()
    (again,) = build_outputs(case.source, case.result, kinds=["sr"], pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    assert _sr_bytes(sr) == first
    assert _without_creation_times(other_sr) != _without_creation_times(sr)
    assert _without_creation_times(again) == _without_creation_times(sr)
