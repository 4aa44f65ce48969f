"""The codestream's own dimensions are checked before any decoder runs (issue 15, row 4)."""
from __future__ import annotations

import numpy as np
import pytest

from cephnode.dicom_io.pixels import PixelDataError, read_dicom_image
from tests.support import dicomgen, fuzz


@pytest.fixture(scope="module")
def img():
    return dicomgen.isbi_image("160", scale=0.4)


@pytest.mark.parametrize("variant", ["jpeg2000", "jpegls", "rle"])
def test_header_that_disagrees_with_the_codestream_is_refused(img, variant):
    ds = dicomgen.ceph_variant(img, variant)
    assert read_dicom_image(ds).pixels.shape == (int(ds.Rows), int(ds.Columns))
    ds.Rows = int(ds.Rows) // 2
    with pytest.raises(PixelDataError, match="codestream declares|RLE segment decodes"):
        read_dicom_image(ds)


def test_bombs_are_refused_before_decoding(img):
    import pydicom
    from io import BytesIO

    for case in fuzz.generate_bombs(img):
        if case.klass != "bombs" or "deflate" in case.name:
            continue
        ds = pydicom.dcmread(BytesIO(case.data))
        with pytest.raises(PixelDataError, match="codestream declares|RLE segment|implausible image size"):
            read_dicom_image(ds, max_pixels=50_000_000)


def test_plain_pixels_are_not_affected():
    ds = dicomgen.make_dx(np.tile(np.arange(256, dtype=np.uint8), (100, 1)))
    assert read_dicom_image(ds).pixels.shape == (100, 256)
