"""dicom_io.pixels on real ISBI images in the encodings modalities send, and on bad input."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from cephnode.dicom_io.pixels import PixelDataError, read_dicom_image
from cephnode.inference.orientation import pose_from_patient_orientation, to_canonical
from tests.support import dicomgen


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return dicomgen.isbi_image("151", scale=0.4)


def _grey(ds: Dataset) -> np.ndarray:
    return read_dicom_image(ds).pixels


def test_lossless_encodings_decode_to_the_same_picture(img):
    ref = _grey(dicomgen.ceph_variant(img, "plain"))
    assert ref.dtype == np.float32 and ref.shape == img.shape
    # bright = dense, monotonic in the stored 8-bit values
    assert np.corrcoef(ref.ravel(), img.ravel().astype(np.float32))[0, 1] > 0.99
    for variant in ("monochrome1", "jpeg2000", "jpegls", "rle"):
        got = _grey(dicomgen.ceph_variant(img, variant))
        assert np.abs(got - ref).max() < 0.01, variant


def test_window_is_applied(img):
    plain = _grey(dicomgen.ceph_variant(img, "plain"))
    windowed = _grey(dicomgen.ceph_variant(img, "window16"))
    assert np.corrcoef(plain.ravel(), windowed.ravel())[0, 1] > 0.98
    # the window (80 % of the range) clips: more pixels at the extremes than without it
    assert (windowed >= 0.999).sum() + (windowed <= 0.001).sum() > (plain >= 0.999).sum() + (plain <= 0.001).sum()


def test_geometry_is_passed_on(img):
    mirrored = read_dicom_image(dicomgen.ceph_variant(img, "mirrored"))
    assert mirrored.patient_orientation == ("P", "F")
    assert np.abs(mirrored.pixels[:, ::-1] - _grey(dicomgen.ceph_variant(img, "plain"))).max() < 0.01
    rotated = read_dicom_image(dicomgen.ceph_variant(img, "rotated", pixel_spacing_mm=(0.2, 0.1)))
    assert rotated.patient_orientation == ("F", "P")
    # the tag tells the truth: the pose it names turns the film into the canonical one (face
    # left, upright), as the plain film's own tag does
    canonical = to_canonical(_grey(dicomgen.ceph_variant(img, "plain")),
                             *pose_from_patient_orientation(("A", "F")))
    assert np.abs(to_canonical(rotated.pixels, *pose_from_patient_orientation(rotated.patient_orientation))
                  - canonical).max() < 0.01
    assert rotated.pixels.shape == img.shape[::-1]
    assert rotated.pixel_spacing_mm == (0.1, 0.2)


def test_spacing_sources(img):
    ds = dicomgen.make_dx(img, pixel_spacing_mm=(0.2, 0.2))
    ds.EstimatedRadiographicMagnificationFactor = "1.1"
    im = read_dicom_image(ds)
    assert im.pixel_spacing_mm == pytest.approx((0.2 / 1.1, 0.2 / 1.1))
    assert "Magnification" in im.spacing_source
    ds.PixelSpacing = ["0.15", "0.15"]
    del ds.EstimatedRadiographicMagnificationFactor
    assert read_dicom_image(ds).pixel_spacing_mm == (0.15, 0.15)
    none = read_dicom_image(dicomgen.make_dx(img, pixel_spacing_mm=None))
    assert none.pixel_spacing_mm is None and none.spacing_source.startswith("unknown")


def test_rescale_slope_and_intercept_do_not_change_the_picture(img):
    ds = dicomgen.make_dx(img, bits=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = str(4095 - 1024), str(8192)  # window in rescaled units
    got = _grey(ds)
    assert np.abs(got - _grey(dicomgen.make_dx(img, bits=12))).max() < 0.01


@pytest.mark.parametrize("breakage, reason", [
    ("no_pixels", "no Pixel Data"),
    ("tiny", "implausible image size"),
    ("absurd", "implausible image size"),
    ("multiframe", "multi-frame"),
    ("colour", "not greyscale"),
    ("truncated_pixels", "cannot be decoded"),
    ("blank", "blank"),
])
def test_bad_input_is_refused_with_a_reason(img, breakage, reason):
    ds = dicomgen.make_dx(img)
    if breakage == "no_pixels":
        del ds.PixelData
    elif breakage == "tiny":
        ds = dicomgen.make_dx(img[:32, :32])
    elif breakage == "absurd":
        ds.Rows, ds.Columns = 65535, 65535
    elif breakage == "multiframe":
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
    elif breakage == "colour":
        ds.PhotometricInterpretation = "RGB"
        ds.SamplesPerPixel = 3
    elif breakage == "truncated_pixels":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    elif breakage == "blank":
        ds = dicomgen.make_dx(np.full_like(img, 77))
    with pytest.raises(PixelDataError, match=reason):
        read_dicom_image(ds)


def test_signed_pixels_and_padding(img):
    # signed 16-bit stored values (PixelRepresentation 1), as some CR readers write them
    ds = dicomgen.make_dx(img, bits=12)
    signed = ds.pixel_array.astype(np.int16) - 2048
    ds.PixelRepresentation = 1
    ds.PixelData = signed.astype(np.int16).tobytes()
    ds.WindowCenter, ds.WindowWidth = "0", "4096"
    ref = _grey(dicomgen.make_dx(img, bits=12))
    assert np.abs(_grey(ds) - ref).max() < 0.01

    # a collimator border written as Pixel Padding Value must not flatten the contrast
    anatomy = np.clip(img, 10, 245)           # the padding value 255 occurs nowhere else
    padded = anatomy.copy()
    padded[:, :20] = 255
    ds = dicomgen.make_dx(padded)
    ds.PixelPaddingValue = 255
    got = read_dicom_image(ds).pixels
    assert (got[:, :20] == 0).all()
    interior = _grey(dicomgen.make_dx(np.ascontiguousarray(anatomy[:, 20:])))
    assert np.abs(got[:, 20:] - interior).max() < 0.02
