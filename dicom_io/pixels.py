"""Turn a DICOM image into display-ready grey pixels plus the geometry inference needs.

pydicom does the decoding (its pixel handlers and the permissive plugins in pyproject.toml); this module
applies the grey-scale pipeline a viewer would (Modality LUT, VOI LUT / window,
MONOCHROME1 inversion) and works out the true pixel spacing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cephnode.dicom_io.transfer_syntaxes import register_decoders

register_decoders()  # our 12-bit JPEG Extended plugin, in whichever process decodes


class PixelDataError(ValueError):
    """The instance has no usable single-frame greyscale image."""


@dataclass
class DicomImage:
    pixels: np.ndarray                       # (rows, cols) float32 in [0, 1], bright = dense
    pixel_spacing_mm: tuple[float, float] | None   # (row, column) at the patient, None if unknown
    spacing_source: str                      # how the spacing was obtained, or why it is unknown
    patient_orientation: tuple[str, str] | None    # (row direction, column direction), e.g. ("P", "F")
    bits_stored: int


MAX_PIXELS = 12_000 * 12_000  # larger than any radiograph detector


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    def pair(tag: str) -> tuple[float, float] | None:
        v = ds.get(tag)
        if v is None or len(v) != 2:
            return None
        r, c = float(v[0]), float(v[1])
        return (r, c) if r > 0 and c > 0 else None

    ps = pair("PixelSpacing")
    ips = pair("ImagerPixelSpacing")
    if ps is not None and ips is None:
        return ps, "PixelSpacing"
    if ips is not None:
        # Imager Pixel Spacing is at the detector; a projection magnifies the patient.
        erm = ds.get("EstimatedRadiographicMagnificationFactor")
        if erm is not None and float(erm) > 0:
            f = float(erm)
            return (ips[0] / f, ips[1] / f), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        if ps is not None:
            # PS present beside IPS: the modality already calibrated (PS 3.3 C.8.11.7)
            return ps, "PixelSpacing (calibrated, beside ImagerPixelSpacing)"
        return ips, "ImagerPixelSpacing (no magnification factor: detector plane, not patient)"
    return None, "unknown: no PixelSpacing or ImagerPixelSpacing"


def _orientation(ds: Dataset) -> tuple[str, str] | None:
    po = ds.get("PatientOrientation")
    if po is None or len(po) != 2 or not all(str(v) for v in po):
        return None
    return (str(po[0]).upper(), str(po[1]).upper())


def _padding_mask(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Pixels equal to Pixel Padding Value (or within it and Pixel Padding Range Limit), in
    stored values; None when the instance declares no padding."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, (bytes, bytearray)):
        return None
    a = int(value)
    limit = ds.get("PixelPaddingRangeLimit")
    b = int(limit) if limit is not None and not isinstance(limit, (bytes, bytearray)) else a
    lo, hi = min(a, b), max(a, b)
    mask = (raw >= lo) & (raw <= hi)
    return mask if mask.any() else None


def read_dicom_image(source: str | Path | Dataset) -> DicomImage:
    """Decode one single-frame greyscale image. Raises PixelDataError with a clear reason."""
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(str(source))
    if "PixelData" not in ds:
        raise PixelDataError("no Pixel Data in the instance")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows < 64 or cols < 64 or rows * cols > MAX_PIXELS:
        raise PixelDataError(f"implausible image size {rows} x {cols}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PixelDataError(f"multi-frame image ({ds.NumberOfFrames} frames) is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(f"photometric interpretation {photometric or 'missing'} is not greyscale")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/unsupported data
        raise PixelDataError(f"pixel data cannot be decoded: {exc}") from exc
    if raw.ndim != 2:
        raise PixelDataError(f"expected a 2-D greyscale frame, got shape {raw.shape}")

    padding = _padding_mask(raw, ds)
    values = apply_modality_lut(raw, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0)
    values = np.asarray(values, dtype=np.float32)
    # Padding (outside the collimated field, PS3.3 C.7.5.1.1.2) carries no anatomy: it must not
    # set the contrast stretch, and it is shown as background.
    image_values = values[~padding] if padding is not None else values
    if image_values.size == 0:
        raise PixelDataError("image is blank (every pixel is padding)")
    lo, hi = float(image_values.min()), float(image_values.max())
    if hi <= lo:
        raise PixelDataError("image is blank (all pixels equal)")
    # Robust stretch: ignore the extreme 0.1 % so burnt-in labels or dead pixels do not flatten contrast.
    p_lo, p_hi = np.percentile(image_values, (0.1, 99.9))
    if p_hi <= p_lo:
        p_lo, p_hi = lo, hi
    grey = np.clip((values - p_lo) / (p_hi - p_lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    if padding is not None:
        grey[padding] = 0.0
    spacing, how = _spacing(ds)
    return DicomImage(
        pixels=grey.astype(np.float32),
        pixel_spacing_mm=spacing,
        spacing_source=how,
        patient_orientation=_orientation(ds),
        bits_stored=int(ds.get("BitsStored", 8)),
    )
