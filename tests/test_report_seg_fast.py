"""dicom_io.seg.Segmentation makes the very SEG plain highdicom makes (issue 14: only its overlap
check is cheaper). Each case is built twice by dicom_io.seg.build_seg, once as the node builds it
and once with highdicom's own Segmentation put in its place; the two must be equal datasets and
encode to the same bytes. Ignored, and only these: the clock stamps highdicom writes at each build.
"""
from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest

from cephnode.cephalometry.analysis import analyse
from cephnode.dicom_io import seg as seg_module
from cephnode.dicom_io.outputs import instance_uid, series_uid
from tests.support.dataset_diff import differences, saved_bytes
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case

CLOCK = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _build(source, result):
    return seg_module.build_seg(
        source, result, analyse(result), pack_name=PACK_NAME, pack_version=PACK_VERSION,
        series_uid=series_uid(source, PACK_VERSION, "seg"), sop_uid=instance_uid(source, PACK_VERSION, "seg"),
        series_number=9002,
    )


def _cases():
    plain = isbi_report_case("001")
    yield "pass", plain.source, plain.result
    no_spacing = isbi_report_case("002", spacing=False)
    yield "no-spacing", no_spacing.source, no_spacing.result
    yield "degraded", plain.source, replace(plain.result, degraded=True)
    # few landmarks: fewer structures, and none of them crossing another (Segments Overlap NO)
    keep = {"S", "N", "ANS", "PNS"}
    sparse = replace(plain.result, landmarks=[lm if lm.name in keep else replace(lm, x=None, y=None, confidence=0.0, level="unavailable")
                                              for lm in plain.result.landmarks])
    yield "sparse", plain.source, sparse


@pytest.mark.parametrize("name,source,result", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_seg_equals_plain_highdicom(name, source, result, monkeypatch):
    try:
        fast = _build(source, result)
    except Exception as exc:          # a case with nothing to trace must fail the same way in both
        monkeypatch.setattr(seg_module, "Segmentation", hd.seg.Segmentation)
        with pytest.raises(type(exc)):
            _build(source, result)
        return
    assert type(fast) is seg_module.Segmentation
    monkeypatch.setattr(seg_module, "Segmentation", hd.seg.Segmentation)
    plain = _build(source, result)
    assert type(plain) is hd.seg.Segmentation
    for keyword in CLOCK:
        if keyword in plain:
            setattr(fast, keyword, plain[keyword].value)
    for ours, theirs in zip(fast.get("ContributingEquipmentSequence", []), plain.get("ContributingEquipmentSequence", [])):
        if "ContributionDateTime" in theirs:
            ours.ContributionDateTime = theirs.ContributionDateTime
    assert plain == fast
    assert differences(plain, fast) == []          # every element, Code Meanings included
    assert saved_bytes(plain) == saved_bytes(fast)


@pytest.mark.parametrize("layout", ["crossing", "disjoint", "empty", "one-pixel-twice"])
def test_overlap_check_agrees_with_highdicom(layout):
    masks = np.zeros((1, 40, 30, 3), dtype=bool)
    if layout == "crossing":
        masks[0, 10, :, 0] = True
        masks[0, :, 12, 1] = True
        masks[0, 30, 5:9, 2] = True
    elif layout == "disjoint":
        masks[0, 10, :, 0] = True
        masks[0, 20, :, 1] = True
        masks[0, 30, :, 2] = True
    elif layout == "one-pixel-twice":
        masks[0, 39, 29, 0] = masks[0, 39, 29, 2] = True
    numbers = np.array([1, 2, 3])
    args = (numbers, hd.seg.SegmentationTypeValues.BINARY, np.uint8)
    ours = seg_module.Segmentation._check_and_cast_pixel_array(masks, *args)
    theirs = hd.seg.Segmentation._check_and_cast_pixel_array(masks, *args)
    assert ours[1] == theirs[1]
    assert ours[1] == (hd.seg.SegmentsOverlapValues.YES if layout in ("crossing", "one-pixel-twice")
                       else hd.seg.SegmentsOverlapValues.NO)
    assert np.array_equal(ours[0], theirs[0]) and ours[0].dtype == theirs[0].dtype
    with pytest.raises(ValueError, match="number of segments"):      # highdicom's own checks still apply
        seg_module.Segmentation._check_and_cast_pixel_array(masks, np.array([1, 2]), *args[1:])


@pytest.mark.parametrize("shape", [(1, 40, 30), (2, 7, 9), (1, 1, 1), (3, 5, 8)])
def test_bit_packing_agrees_with_pydicom(shape):
    from types import SimpleNamespace

    from pydicom.pixels.utils import pack_bits

    rng = np.random.default_rng(sum(shape))
    planes = rng.integers(0, 2, shape).astype(np.uint8)
    seg = SimpleNamespace(BitsAllocated=1)
    for array in (planes, planes.astype(bool)):
        assert seg_module.Segmentation._encode_pixels_native(seg, array) == pack_bits(planes, pad=False)
    planes[0, 0, 0] = 2
    with pytest.raises(ValueError, match="binary"):
        seg_module.Segmentation._encode_pixels_native(seg, planes)
