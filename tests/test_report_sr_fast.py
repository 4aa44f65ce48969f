"""dicom_io.sr_fast makes the very SR plain highdicom makes, only faster.

Each case is built twice by dicom_io.sr.build_sr: once as the node builds it (sr_fast's
ComprehensiveSR) and once with highdicom's own ComprehensiveSR put in its place. The two must be
equal datasets and encode to the same bytes. Ignored, and only these: Instance Creation
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
from cephnode.dicom_io import qc_content, sr as sr_module, sr_fast
from cephnode.dicom_io.outputs import instance_uid, series_uid
from cephnode.domain.result import QualityVerdict, Verdict
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case

CLOCK = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _build(case_source, result):
    return sr_module.build_sr(
        case_source, result, analyse(result), pack_name=PACK_NAME, pack_version=PACK_VERSION,
        series_uid=series_uid(case_source, PACK_VERSION, "sr"), sop_uid=instance_uid(case_source, PACK_VERSION, "sr"),
        series_number=9001,
    )


def _encoded(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


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


@pytest.mark.parametrize("name,source,result", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_sr_equals_plain_highdicom(name, source, result, monkeypatch):
    fast = _build(source, result)
    assert type(fast) is sr_fast.ComprehensiveSR
    monkeypatch.setattr(sr_module, "ComprehensiveSR", hd.sr.ComprehensiveSR)
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
    assert sorted(e.keyword for e in plain) == sorted(e.keyword for e in fast)
    assert _encoded(plain) == _encoded(fast)
    # `content` reads the tree into highdicom objects on demand, as plain highdicom keeps it.
    assert fast.content[0].ContentSequence == plain.content[0].ContentSequence
    assert type(fast.content) is type(plain.content) and type(fast.content[0]) is type(plain.content[0])


def test_fast_sr_reads_back_as_highdicom_sr():
    case = isbi_report_case("001")
    back = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(BytesIO(_encoded(_build(case.source, case.result)))))
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
