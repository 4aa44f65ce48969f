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
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cephnode.dicom_io.codestream import CodestreamError, check_frame
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


MAX_PIXELS = 50_000_000  # default of limits.max_image_pixels: above any cephalostat's detector
# Pixel spacing a cephalogram can have at the patient: detectors are 0.05-0.2 mm, scanned
# film up to about 0.5 mm. Outside this range the value is wrong, and a distance computed
# from it (1e300 mm) would be reported as fact; such a spacing is treated as unknown.
PLAUSIBLE_SPACING_MM = (0.01, 2.0)


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    def pair(tag: str) -> tuple[float, float] | None:
        v = ds.get(tag)
        if v is None or len(v) != 2:
            return None
        r, c = float(v[0]), float(v[1])
        return (r, c) if r > 0 and c > 0 else None

    try:
        ps = pair("PixelSpacing")
        ips = pair("ImagerPixelSpacing")
    except (TypeError, ValueError, OverflowError):
        return None, "unknown: Pixel Spacing is not numeric"
    spacing, how = _raw_spacing(ds, ps, ips)
    if spacing is None:
        return spacing, how
    lo, hi = PLAUSIBLE_SPACING_MM
    if not all(np.isfinite(v) and lo <= v <= hi for v in spacing) or max(spacing) > 3 * min(spacing):
        return None, (f"unknown: implausible spacing {spacing[0]:.6g} x {spacing[1]:.6g} mm from {how} "
                      f"(a cephalogram has {lo}-{hi} mm, nearly square pixels)")
    return spacing, how


def _raw_spacing(ds: Dataset, ps, ips) -> tuple[tuple[float, float] | None, str]:
    if ps is not None and ips is None:
        return ps, "PixelSpacing"
    if ips is not None:
        # Imager Pixel Spacing is at the detector; a projection magnifies the patient.
        erm = ds.get("EstimatedRadiographicMagnificationFactor")
        try:
            erm = float(erm) if erm is not None else None
        except (TypeError, ValueError):
            erm = None
        if erm is not None and np.isfinite(erm) and erm > 0:
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


def _check_codestream(ds: Dataset, rows: int, cols: int, max_pixels: int) -> None:
    """The compressed frame's own dimensions, before a decoder allocates for them."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not ts or not ds["PixelData"].is_undefined_length:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise PixelDataError(f"pixel data cannot be decoded: encapsulated frames unreadable ({type(exc).__name__})")
    try:
        check_frame(ts, frame, rows=rows, cols=cols, samples=int(ds.get("SamplesPerPixel", 1) or 1),
                    bits_allocated=int(ds.get("BitsAllocated", 8) or 8), max_pixels=max_pixels)
    except CodestreamError as exc:
        raise PixelDataError(f"pixel data cannot be decoded: {exc}") from None


def read_dicom_image(source: str | Path | Dataset, *, max_pixels: int = MAX_PIXELS) -> DicomImage:
    """Decode one single-frame greyscale image. Raises PixelDataError with a clear reason."""
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(str(source))
    if "PixelData" not in ds:
        raise PixelDataError("no Pixel Data in the instance")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows < 64 or cols < 64 or rows * cols > max_pixels:
        raise PixelDataError(f"implausible image size {rows} x {cols}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PixelDataError(f"multi-frame image ({ds.NumberOfFrames} frames) is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(f"photometric interpretation {photometric or 'missing'} is not greyscale")
    _check_codestream(ds, rows, cols, max_pixels)
    try:
        raw = ds.pixel_array
    except MemoryError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom raises many types; a Rust decoder panics (not an Exception)
        raise PixelDataError(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}") from None
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
