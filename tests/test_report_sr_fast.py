"""The node's SR is the very SR plain highdicom makes, only faster (issue 14).

Each case is built twice by dicom_io.sr.build_sr: once as the node builds it (content items
written as plain datasets by dicom_io.sr_content, the document by sr_fast's ComprehensiveSR) and
once the plain highdicom way (content items by highdicom's template classes, dicom_io.sr_templates,
and highdicom's own ComprehensiveSR). The two must be equal datasets (every element, recursively,
sequences included) and encode to the same bytes. Ignored, and only these: Instance Creation
Date/Time, Content Date/Time and the Contribution DateTime of highdicom's own entry in the
Contributing Equipment Sequence, which highdicom stamps from the clock at each build.
"""
from __future__ import annotations

from dataclasses import replace
from io import BytesIO

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from cephnode.cephalometry.analysis import analyse
from cephnode.dicom_io import qc_content, sr as sr_module, sr_content, sr_fast, sr_templates
from cephnode.dicom_io.outputs import instance_uid, series_uid
from cephnode.domain.result import QualityVerdict, Verdict
from tests.support.dataset_diff import differences, saved_bytes
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case

CLOCK = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _build(case_source, result):
    return sr_module.build_sr(
        case_source, result, analyse(result), pack_name=PACK_NAME, pack_version=PACK_VERSION,
        series_uid=series_uid(case_source, PACK_VERSION, "sr"), sop_uid=instance_uid(case_source, PACK_VERSION, "sr"),
        series_number=9001,
    )


def _cases():
    plain = isbi_report_case("001")
    yield "pass", plain.source, plain.result
    no_spacing = isbi_report_case("002", spacing=False)
    yield "no-spacing", no_spacing.source, no_spacing.result
    review = replace(plain.result, qc=QualityVerdict(Verdict.REVIEW, ["two doubtful landmarks"], ["Go", "Me"],
                                                     codes=["confidence"]))
    yield "review", plain.source, review
    # A failed tracing: no Imaging Measurements container at all (sr.py's placeholder path).
    failed = replace(plain.result, qc=QualityVerdict(Verdict.FAIL, ["low confidence"], codes=["confidence"]))
    yield "fail", plain.source, qc_content.withheld(failed)
    degraded = isbi_report_case("003")
    degraded.result.degraded = True
    degraded.result.stage0.ok, degraded.result.stage0.failed_phase = False, "0A"
    yield "degraded", degraded.source, degraded.result


@pytest.mark.parametrize("name,source,result", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_sr_equals_plain_highdicom(name, source, result, monkeypatch):
    assert sr_module.CONTENT is sr_content
    fast = _build(source, result)
    assert type(fast) is sr_fast.ComprehensiveSR
    monkeypatch.setattr(sr_module, "ComprehensiveSR", hd.sr.ComprehensiveSR)
    monkeypatch.setattr(sr_module, "CONTENT", sr_templates)
    plain = _build(source, result)
    assert type(plain) is hd.sr.ComprehensiveSR
    for keyword in CLOCK:
        assert keyword in plain and keyword in fast
        setattr(fast, keyword, plain[keyword].value)
    assert len(fast.ContributingEquipmentSequence) == len(plain.ContributingEquipmentSequence)
    for ours, theirs in zip(fast.ContributingEquipmentSequence, plain.ContributingEquipmentSequence):
        if "ContributionDateTime" in theirs:
            ours.ContributionDateTime = theirs.ContributionDateTime
    assert plain == fast
    assert differences(plain, fast) == []          # every element, Code Meanings included
    assert sorted(e.keyword for e in plain) == sorted(e.keyword for e in fast)
    assert saved_bytes(plain) == saved_bytes(fast)
    # `content` reads the tree into highdicom objects on demand, as plain highdicom keeps it.
    assert fast.content[0].ContentSequence == plain.content[0].ContentSequence
    assert type(fast.content) is type(plain.content) and type(fast.content[0]) is type(plain.content[0])


def test_the_comparison_sees_a_different_code_meaning():
    case = isbi_report_case("001")
    a, b = _build(case.source, case.result), _build(case.source, case.result)
    code = b.ContentSequence[-1].ContentSequence[0].ConceptCodeSequence[0]
    code.CodeMeaning = code.CodeMeaning + " (changed)"
    assert any("ConceptCodeSequence[0].CodeMeaning" in d for d in differences(a, b))
    assert code == a.ContentSequence[-1].ContentSequence[0].ConceptCodeSequence[0]   # (highdicom: codes only)


def test_fast_sr_reads_back_as_highdicom_sr():
    case = isbi_report_case("001")
    back = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(BytesIO(saved_bytes(_build(case.source, case.result)))))
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == sum(lm.available for lm in case.result.landmarks) + sum(
        m.value is not None for m in analyse(case.result).measurements)


def test_fast_sr_refuses_what_highdicom_refuses():
    """The checks highdicom makes on the whole tree are still made: evidence for every
    referenced image, and no SCOORD3D in a Comprehensive SR."""
    case = isbi_report_case("001")
    sr = _build(case.source, case.result)
    other = isbi_report_case("002").source          # another SOP instance, not the referenced one
    for cls in (hd.sr.ComprehensiveSR, sr_fast.ComprehensiveSR):
        with pytest.raises(ValueError, match="No evidence was provided"):
            cls(evidence=[other], content=sr._full_root, series_instance_uid=sr.SeriesInstanceUID,
                series_number=1, sop_instance_uid=sr.SOPInstanceUID, instance_number=1)
    assert sr_fast.referenced_instances(sr._full_root) == {str(case.source.SOPInstanceUID)}
    leaf = Dataset()
    leaf.ValueType = "SCOORD3D"
    root = Dataset()
    root.ContentSequence = [Dataset(), leaf]
    root.ContentSequence[0].ValueType = "CONTAINER"
    with pytest.raises(ValueError, match="SCOORD3D"):
        sr_fast.referenced_instances(root)


def test_label_cover_count_equals_the_plain_count():
    """sr_labels._Samples.covered compares only the points in each box's y-band (a run of the
    y-sorted points); the counts must be those of testing every point against every box."""
    import numpy as np

    from cephnode.dicom_io.sr_labels import _Samples

    rng = np.random.default_rng(14)
    for _ in range(50):
        corners = rng.uniform(0, 2000, (rng.integers(1, 40), 2))
        boxes = np.concatenate([corners, corners + rng.uniform(5, 300, (len(corners), 2))], axis=1)
        points = rng.uniform(-50, 2500, (rng.integers(0, 3000), 2))
        tenth = len(points) // 10
        points[:tenth] = boxes[rng.integers(0, len(boxes), tenth), :2]                   # on the edges too:
        points[tenth:2 * tenth] = boxes[rng.integers(0, len(boxes), tenth), 2:]          # top-left, bottom-right
        points[2 * tenth:3 * tenth, 1] = points[:tenth, 1]                               # and equal y values
        x, y = points[None, :, 0], points[None, :, 1]
        plain = ((x >= boxes[:, 0:1]) & (x <= boxes[:, 2:3]) & (y >= boxes[:, 1:2]) & (y <= boxes[:, 3:4])).sum(axis=1)
        assert np.array_equal(_Samples(points).covered(boxes), plain)
