"""Draw a tracing (landmarks and Stage 0 contours) over the image, for people to look at."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cephnode.inference.result import InferenceResult

# BGR
LEVEL_COLOURS = {"high": (60, 200, 60), "medium": (0, 200, 255), "low": (60, 60, 255)}
RULE_COLOUR = (255, 160, 60)
CONTOUR_COLOURS = {
    "cranial_base": (255, 200, 0), "palatal_plane": (255, 0, 200), "mandibular_border": (0, 255, 255),
    "mandibular_symphysis": (0, 140, 255), "upper_incisor_axis": (200, 255, 120), "lower_incisor_axis": (120, 255, 200),
}
PROFILE_COLOUR = (180, 180, 180)


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f[::4, ::4], (0.5, 99.5))
        img = np.clip((f - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)


def draw_overlay(image: np.ndarray, result: InferenceResult) -> np.ndarray:
    """BGR uint8 image with contours, the profile and labelled landmarks."""
    canvas = _to_bgr8(image)
    h, w = canvas.shape[:2]
    unit = max(1, int(round(max(h, w) / 800)))
    for cls, pts in result.stage0.contours.items():
        if len(pts) >= 2:
            cv2.polylines(canvas, [np.round(np.asarray(pts) * 16).astype(np.int32)], False,
                          CONTOUR_COLOURS.get(cls, (255, 255, 255)), unit, cv2.LINE_AA, shift=4)
    if len(result.stage0.profile) >= 2:
        cv2.polylines(canvas, [np.round(np.asarray(result.stage0.profile) * 16).astype(np.int32)], False,
                      PROFILE_COLOUR, unit, cv2.LINE_AA, shift=4)
    font_scale = 0.45 * unit
    for lm in result.landmarks:
        if not lm.available:
            continue
        colour = LEVEL_COLOURS.get(lm.level, (255, 255, 255)) if lm.predicted else RULE_COLOUR
        c = (int(round(lm.x * 16)), int(round(lm.y * 16)))
        cv2.circle(canvas, c, 4 * unit * 16, colour, unit, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, c, unit * 16, colour, -1, cv2.LINE_AA, shift=4)
        org = (int(lm.x) + 6 * unit, int(lm.y) - 4 * unit)
        cv2.putText(canvas, lm.name, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3 * unit, cv2.LINE_AA)
        cv2.putText(canvas, lm.name, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, unit, cv2.LINE_AA)
    banner = f"{result.pack_name} {result.pack_version}" + ("  DEGRADED: " + f"{result.stage0.failed_phase} "
                                                            f"{result.stage0.reason}" if result.degraded else "")
    cv2.putText(canvas, banner, (8 * unit, 20 * unit), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3 * unit, cv2.LINE_AA)
    cv2.putText(canvas, banner, (8 * unit, 20 * unit), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), unit, cv2.LINE_AA)
    return canvas


def write_overlay(image: np.ndarray, result: InferenceResult, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), draw_overlay(image, result)):
        raise OSError(f"{path}: could not write the overlay PNG")
    return path
