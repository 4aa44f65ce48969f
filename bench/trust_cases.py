"""Shared by bench_pose.py and bench_quality.py: ISBI test1 films presented in a given pose
and device shift, traced by the real pipeline, scored in true millimetres.

A case is (film, device shift, pose): the stored film (faces right) is shifted
(training.deviceshift), brought to the canonical pose (mirror) and then turned so that the
pose (k, flip) is the one that brings it back; the ground truth follows every step, so the
pipeline's answer can be checked both for its pose and for its points.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# the pipeline's log lines go to stderr: stdout is the benchmark's JSON
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

from cephnode.domain.landmarks import ISBI_19  # noqa: E402
from cephnode.inference.orientation import forward_points, inverse_points  # noqa: E402
from cephnode.training import deviceshift, isbi  # noqa: E402
from cephnode.training.evaluate import radial_errors_mm  # noqa: E402


@dataclass
class Presented:
    image: np.ndarray
    truth: np.ndarray                    # (19, 2) in the presented image's pixels
    spacing_mm: tuple[float, float]      # (row, column) of the presented image
    expected: tuple[int, bool, bool]     # (k, flip, inverted) the pipeline should find


def load_test1(step: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(case id, decoded grey film, mean ground truth), decoded once."""
    cases = isbi.load_cases("test1", exclude_duplicates=True)[::step]
    return [(c.case_id, cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE), c.mean) for c in cases]


def present(img: np.ndarray, truth: np.ndarray, shift: deviceshift.Shift | None, pose: tuple[int, bool],
            seed: int) -> Presented:
    spacing = isbi.pixel_spacing_mm()
    if shift is not None:
        img, truth, spacing = deviceshift.apply(img, truth, spacing, shift, seed=seed)
    h, w = img.shape
    canon = np.ascontiguousarray(img[:, ::-1])                      # ISBI films face right
    c_pts = forward_points(truth, w, h, 0, True)
    k, flip = pose
    shown = np.ascontiguousarray(np.rot90(canon[:, ::-1] if flip else canon, -k))
    sh, sw = shown.shape
    pts = inverse_points(c_pts, sw, sh, k, flip)
    sp = (spacing[1], spacing[0]) if k % 2 else spacing
    return Presented(shown, pts, sp, (k, flip, bool(shift is not None and shift.invert)))


def trace(pipe, p: Presented, name: str, **kw) -> dict:
    """Run the pipeline; return a flat record of what came out and how right it is."""
    t0 = time.perf_counter()
    res = pipe.run(p.image, pixel_spacing_mm=p.spacing_mm, name=name, **kw)
    wall = (time.perf_counter() - t0) * 1e3
    pred = np.array([[np.nan, np.nan] if not res.landmark(n).available else [res.landmark(n).x, res.landmark(n).y]
                     for n in ISBI_19])
    err = radial_errors_mm(pred, p.truth, p.spacing_mm)
    o = res.orientation
    got = (o.rotation_k, o.flipped, o.inverted)
    conf = {n: res.landmark(n).confidence for n in ISBI_19}
    return {
        "name": name, "expected": list(p.expected), "got": list(got), "pose_ok": got == p.expected,
        "verification": o.verification, "tried": o.hypotheses_tried, "margin": o.margin,
        "wall_ms": round(wall, 1), "extra_ms": res.timings_ms.get("pose_verification", 0.0),
        "mre_mm": round(float(np.nanmean(err)), 3), "errors_mm": [round(float(e), 3) for e in err],
        "confidence": [round(float(conf[n]), 3) for n in ISBI_19],
        "level": [res.landmark(n).level for n in ISBI_19],
        "qc": res.qc.to_dict() if res.qc else None,
    }
