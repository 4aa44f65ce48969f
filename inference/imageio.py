"""Decode an input once and bring it to the 512 x 512 working grid.

Accepts grey (H, W) or RGB (H, W, 3) arrays (uint8, uint16 or any integer type, or float),
and files: PNG/JPEG/TIFF/BMP through OpenCV (IMREAD_UNCHANGED keeps 16-bit data) and DICOM
through dicom_io.pixels. The full-size image is touched once, by the resize; intensity
scaling happens on the 512 x 512 result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inference.geometry import WORK

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class ImageError(ValueError):
    """The input is not an image the pipeline can read."""


@dataclass
class WorkImage:
    grey: np.ndarray            # (512, 512) float32 in [0, 1], original pose
    rgb: np.ndarray | None      # (512, 512, 3) float32 in [0, 1] when the input had colour, else None
    width: int                  # original size
    height: int


@dataclass
class FileImage:
    """A decoded file: the pixels plus what the file says about geometry."""
    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    patient_orientation: tuple[str, str] | None = None
    source: str = ""


def resize_to_work(img: np.ndarray, size: int = WORK) -> np.ndarray:
    """Area averaging when shrinking (no aliasing from the detector's fine noise), bilinear
    when enlarging. Training uses this same function so both see identical pixels."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if (w >= size and h >= size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def _intensity_window(img: np.ndarray) -> tuple[float, float]:
    """Map for non-8-bit data: robust 0.1-99.9 % stretch, estimated on a strided sample."""
    step = max(1, int(np.sqrt(img.shape[0] * img.shape[1] / 250_000)))
    sample = img[::step, ::step]
    lo, hi = np.percentile(sample, (0.1, 99.9))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def prepare(image: np.ndarray) -> WorkImage:
    """Any grey/RGB array -> the 512 working image (float32 [0, 1])."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ImageError(f"expected (H, W) grey or (H, W, 3) RGB, got shape {img.shape}")
    h, w = img.shape[:2]
    if h < 32 or w < 32:
        raise ImageError(f"image of {w} x {h} pixels is too small")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.dtype == np.uint8:
        lo, hi = 0.0, 255.0                      # the contract's /255
    elif np.issubdtype(img.dtype, np.integer):
        if img.dtype not in (np.uint16, np.int16):   # cv2.resize handles these natively
            img = img.astype(np.float32)
        if int(img.max()) <= 255 and int(img.min()) >= 0:
            lo, hi = 0.0, 255.0                  # 8-bit values in a wider type
        else:
            lo, hi = _intensity_window(img)      # 12/16-bit: stretch what is really used
    elif np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ImageError("image has NaN or infinite pixels")
        img = img.astype(np.float32, copy=False)
        lo, hi = float(img.min()), float(img.max())
        lo, hi = (0.0, 1.0) if (lo >= 0.0 and hi <= 1.0) else _intensity_window(img)
    else:
        raise ImageError(f"unsupported pixel type {img.dtype}")

    small = resize_to_work(img).astype(np.float32)
    small -= lo
    small *= 1.0 / (hi - lo)
    np.clip(small, 0.0, 1.0, out=small)
    if small.ndim == 3:
        rgb = small
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if np.allclose(rgb[:, :, 0], rgb[:, :, 1]) and np.allclose(rgb[:, :, 1], rgb[:, :, 2]):
            rgb = None                            # a grey image stored as RGB
        return WorkImage(grey, rgb, w, h)
    return WorkImage(small, None, w, h)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_file(path: str | Path) -> FileImage:
    """Decode one file (raster or DICOM) once."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if _is_dicom(path):
        from dicom_io.pixels import read_dicom_image    # pydicom only when a DICOM file comes in

        try:
            di = read_dicom_image(path)
        except Exception as exc:
            raise ImageError(f"{path}: {exc}") from exc
        return FileImage(di.pixels, di.pixel_spacing_mm, di.patient_orientation, "dicom")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: not a readable image (PNG, JPEG, TIFF, BMP or DICOM)")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = cv2.cvtColor(img, code)
    return FileImage(img, None, None, path.suffix.lower().lstrip("."))
