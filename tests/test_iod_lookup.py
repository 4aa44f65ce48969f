"""dicom_io.iod_lookup answers exactly as highdicom's own is_attribute_in_iod, and is installed
where highdicom looks it up."""
from __future__ import annotations

import highdicom._standard_utils as standard_utils
import highdicom.base as hd_base
import pytest

from cephnode.dicom_io import iod_lookup, outputs  # noqa: F401 (outputs installs the lookup)

ATTRIBUTES = ["ContentDate", "ContentTime", "PixelData", "FloatPixelData", "DoubleFloatPixelData",
              "NumberOfFrames", "PatientOrientation", "BurnedInAnnotation", "NoSuchKeyword"]
EXCLUDES = [None, ["IconImageSequence"], ("IconImageSequence", "ReferencedImageSequence")]


def test_every_answer_is_the_originals():
    original = iod_lookup._ORIGINAL
    checked = 0
    for sop_class in standard_utils.get_sop_class_iod_map():
        for attribute in ATTRIBUTES:
            for exclude in EXCLUDES:
                try:
                    expected = original(attribute, sop_class, None if exclude is None else list(exclude))
                except KeyError:      # highdicom's tables lack a module of a few IODs: same error
                    for _ in range(2):
                        with pytest.raises(KeyError):
                            iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude)
                    continue
                assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected, \
                    (attribute, sop_class, exclude)
                # asked twice: the remembered answer is the same
                assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected
                checked += 1
    assert checked > 1000
    # some answers are True and some False, so the comparison above could fail either way
    assert iod_lookup.is_attribute_in_iod("PixelData", "1.2.840.10008.5.1.4.1.1.1.1")       # DX
    assert not iod_lookup.is_attribute_in_iod("PixelData", "1.2.840.10008.5.1.4.1.1.88.33",    # Comprehensive SR
                                              ["IconImageSequence"])


def test_an_unknown_sop_class_still_raises_every_time():
    for _ in range(2):
        with pytest.raises(KeyError, match="No IOD found"):
            iod_lookup.is_attribute_in_iod("PixelData", "1.2.3.4.5")


def test_installed_where_highdicom_looks_it_up():
    assert standard_utils.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    assert hd_base.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    # highdicom's callers inside the module go through it
    before = iod_lookup._answer.cache_info().hits + iod_lookup._answer.cache_info().misses
    standard_utils.does_iod_have_pixel_data("1.2.840.10008.5.1.4.1.1.7")
    assert iod_lookup._answer.cache_info().hits + iod_lookup._answer.cache_info().misses > before
