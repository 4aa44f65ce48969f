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

from cephnode.inference.geometry import WORK

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class ImageError(ValueError):
    """The input is not an image the pipeline can read."""


@dataclass
class WorkImage:
    grey: np.ndarray            # (512, 512) float32 in [0, 1], in the pose it was prepared in
    rgb: np.ndarray | None      # (512, 512, 3) float32 in [0, 1] when the input had colour, else None
    width: int                  # original image size (before any turn)
    height: int


@dataclass
class FileImage:
    """A decoded file: the pixels plus what the file says about geometry."""
    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    patient_orientation: tuple[str, str] | None = None
    source: str = ""


def resize_to_work(img: np.ndarray, size: int = WORK) -> np.ndarray:
    """Bilinear resize to size x size, as the contract (and our training) does.

    Images over three times the target on a side (full-size detectors: 2000 x 2500 and more)
    are first area-averaged to at most 3 x size, so bilinear sampling does not alias the
    detector's fine noise; ISBI-sized images (968 x 1200) go straight through bilinear,
    pixel-identical to the training cache. Both steps keep cv2's half-pixel-centre mapping,
    so inference.geometry's point mapping holds for the composition."""
    h, w = img.shape[:2]
    cap = 3 * size
    if w > cap or h > cap:
        img = cv2.resize(img, (min(w, cap), min(h, cap)), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def _intensity_window(img: np.ndarray) -> tuple[float, float]:
    """Map for non-8-bit data: robust 0.1-99.9 % stretch over every pixel (a strided sample
    would depend on how the image is stored, and a mirrored image must trace the same)."""
    grey = img if img.ndim == 2 else img.reshape(-1, img.shape[-1]).mean(axis=1)
    if grey.dtype == np.uint16:
        # One histogram pass (OpenCV) instead of sorting millions of values.
        hist = cv2.calcHist([np.ascontiguousarray(grey)], [0], None, [65536], [0, 65536]).ravel()
        cdf = np.cumsum(hist)
        total = cdf[-1]
        lo = float(np.searchsorted(cdf, 0.001 * total, side="right"))
        hi = float(np.searchsorted(cdf, 0.999 * total, side="left"))
    else:
        lo, hi = (float(v) for v in np.percentile(grey, (0.1, 99.9)))
    if hi <= lo:
        lo, hi = float(grey.min()), float(grey.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


@dataclass
class Normalised:
    """A validated input in its native type, with the intensity window that maps it to [0, 1]."""
    pixels: np.ndarray          # (H, W) or (H, W, 3): uint8, uint16, int16 or float32
    lo: float
    hi: float

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def normalise_input(image: np.ndarray) -> Normalised:
    """Check shape and type; choose the intensity window (no full-size float copy)."""
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
        if img.dtype not in (np.uint16, np.int16):   # cv2 handles these natively
            img = img.astype(np.float32)
        if float(img.max()) <= 255 and float(img.min()) >= 0:
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
    return Normalised(img, lo, hi)


def thumbnail(n: Normalised, size: int = 64) -> np.ndarray:
    """Orientation detection's input: the central 84 % of the image (original pose), area-
    averaged to size x size grey float32, straight from the native pixels."""
    from cephnode.inference.orientation import central_crop

    core = central_crop(n.pixels)
    # Striding first keeps a full-size detector image cheap: ~4 x size samples per side are
    # plenty for a size x size area average.
    step = max(1, min(core.shape[0], core.shape[1]) // (4 * size))
    t = cv2.resize(np.ascontiguousarray(core[::step, ::step]), (size, size),
                   interpolation=cv2.INTER_AREA).astype(np.float32)
    if t.ndim == 3:
        t = cv2.cvtColor(t, cv2.COLOR_RGB2GRAY)
    return (t - n.lo) / (n.hi - n.lo)


_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def apply_pose(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """np.rot90(img, k) then (if flip) mirror left-right, done by OpenCV's fast kernels."""
    k %= 4
    if k:
        img = cv2.rotate(np.ascontiguousarray(img), _ROTATE[k])
    if flip:
        img = cv2.flip(np.ascontiguousarray(img), 1)
    return img


def work_image(n: Normalised, pose: tuple[int, bool] = (0, False)) -> WorkImage:
    """Turn the full-size image into the canonical pose, then resize to 512 and scale to [0, 1].

    Turning before resizing (as training/cache.py does) makes the working image bit-identical
    whichever way the input was stored: OpenCV's fixed-point bilinear resize rounds
    differently along rows and columns, so resizing first and turning after would not be."""
    img = n.pixels
    h, w = img.shape[:2]
    f = -(-max(h, w) // (3 * WORK))          # integer reduction that brings the image to <= 1536
    if f > 1 and h % f == 0 and w % f == 0:
        # Exact f x f block means (OpenCV's integer-ratio area path) commute with turns and are
        # several times cheaper than a fractional area resize: reduce, then turn the small image.
        img = cv2.resize(img, (w // f, h // f), interpolation=cv2.INTER_AREA)
    canon = apply_pose(img, *pose)
    small = resize_to_work(canon).astype(np.float32)
    small -= n.lo
    small *= 1.0 / (n.hi - n.lo)
    np.clip(small, 0.0, 1.0, out=small)
    if small.ndim == 3:
        rgb = small
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if np.allclose(rgb[:, :, 0], rgb[:, :, 1]) and np.allclose(rgb[:, :, 1], rgb[:, :, 2]):
            rgb = None                            # a grey image stored as RGB
        return WorkImage(grey, rgb, n.width, n.height)
    return WorkImage(small, None, n.width, n.height)


def prepare(image: np.ndarray, pose: tuple[int, bool] = (0, False)) -> WorkImage:
    """Any grey/RGB array -> the 512 working image (float32 [0, 1]) in the given pose."""
    return work_image(normalise_input(image), pose)


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
        from cephnode.dicom_io.pixels import read_dicom_image    # pydicom only when a DICOM file comes in

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
