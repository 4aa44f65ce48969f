"""Image files the command line accepts: DICOM (through dicom_io.pixels, with the spacing and
Patient Orientation it states) and PNG/JPEG/TIFF/BMP rasters (through OpenCV). Each file is
decoded once; the engine itself only ever sees arrays."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cephnode.dicom_io.pixels import read_dicom_image
from cephnode.domain.result import InferenceResult
from cephnode.inference.imageio import ImageError


@dataclass
class FileImage:
    """A decoded file: the pixels plus what the file says about geometry."""
    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    patient_orientation: tuple[str, str] | None = None
    source: str = ""


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


def trace_file(pipeline, path: str | Path, **kw) -> InferenceResult:
    """Decode a file and trace it with `pipeline` (an inference.pipeline.Pipeline); the file's
    DICOM spacing and Patient Orientation are used unless given; the decode time is in the
    result's timings as 'read_file'."""
    t0 = time.perf_counter()
    f = read_file(path)
    read_ms = (time.perf_counter() - t0) * 1e3
    kw.setdefault("pixel_spacing_mm", f.pixel_spacing_mm)
    kw.setdefault("patient_orientation", f.patient_orientation)
    kw.setdefault("name", Path(path).name)
    result = pipeline.run(f.pixels, **kw)
    result.timings_ms = {"read_file": round(read_ms, 3), **result.timings_ms}
    return result
