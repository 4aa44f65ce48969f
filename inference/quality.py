"""Quality gate: every tracing gets a verdict, pass / review / fail, with the reasons.

A tracing is only as good as the evidence that it is right. The signals, each calibrated on
data we hold (bench/bench_quality.py reproduces the figures in docs/quality.md):

- Stage 1 confidence (heatmap peaks). On a film in the right pose the mean over the predicted
  landmarks is >= 0.50 on ISBI test1 (1 % quantile 0.71); in a wrong pose, on a
  non-cephalometric image or on a film the network cannot read, it collapses to about 0.2 or
  less (docs/quality.md has the measured ranges).
- Anatomical plausibility: scale-free angles and ratios between landmarks (and S-N and N-Me in
  mm when the pixel spacing is known), measured in the canonical pose, against their spread on
  the ISBI train split (001-150, mean of both annotators): z = (value - mean) / SD. A single
  feature beyond Z_REVIEW marks its landmarks doubtful; a tracing with several beyond
  Z_FAIL is not a head in any pose we know.
- Pose certainty: where the pose came from (DICOM tag, the image detector, a verification
  that overturned the detector's first choice).
- Pixel spacing known or not (mm values are then omitted, and absolute size is not checked).

The verdict is a pure function of an InferenceResult (the pipeline attaches it as result.qc),
so a stored result can be re-judged, and the thresholds below are the whole policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cephnode.domain.landmarks import CANONICAL_25
from cephnode.inference.orientation import forward_points
from cephnode.domain.result import QualityVerdict, Verdict

PASS, REVIEW, FAIL = Verdict.PASS, Verdict.REVIEW, Verdict.FAIL

# Mean Stage 1 confidence over the predicted landmarks (test1 in 8 poses: min 0.50)
CONF_FAIL = 0.25          # below: the network did not recognise the film
CONF_REVIEW = 0.45        # below: a film unlike the training data; read with care
POINT_LOW = 0.2           # a landmark at or below this peak is doubtful (the contract's "low" band)
Z_REVIEW = 4.0            # one feature this far from the population: its landmarks are doubtful
Z_FAIL = 8.0              # this far, on FAIL_FEATURES or more features: not a plausible head
FAIL_FEATURES = 2
DOUBTFUL_FAIL = 8         # this many doubtful landmarks out of 19: the tracing as a whole fails


def _angle(a: np.ndarray, v: np.ndarray, b: np.ndarray) -> float:
    """Angle a-v-b in degrees, 0..180."""
    u, w = a - v, b - v
    c = float(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w) + 1e-9))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _direction(a: np.ndarray, b: np.ndarray) -> float:
    """Direction of a -> b in degrees in the canonical image (x right, y down), -180..180."""
    d = b - a
    return float(np.degrees(np.arctan2(d[1], d[0])))


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def _wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


# name -> (landmarks it uses, function of the canonical-pose points in mm-or-pixel units).
# Directions are absolute in the canonical pose (face left, upright), so they also catch a
# tracing that is upside down or mirrored; angles and ratios catch a scrambled one.
FEATURES: dict[str, tuple[tuple[str, ...], object]] = {
    "S->N direction": (("S", "N"), lambda p: _direction(p["S"], p["N"])),
    "N->Me direction": (("N", "Me"), lambda p: _direction(p["N"], p["Me"])),
    "Po->Or direction": (("Po", "Or"), lambda p: _direction(p["Po"], p["Or"])),
    "Go->Me direction": (("Go", "Me"), lambda p: _direction(p["Go"], p["Me"])),
    "Sn->Pog_soft direction": (("Sn", "Pog_soft"), lambda p: _direction(p["Sn"], p["Pog_soft"])),
    "PNS->ANS direction": (("PNS", "ANS"), lambda p: _direction(p["PNS"], p["ANS"])),
    "SNA": (("S", "N", "A"), lambda p: _angle(p["S"], p["N"], p["A"])),
    "SNB": (("S", "N", "B"), lambda p: _angle(p["S"], p["N"], p["B"])),
    "saddle N-S-Ar": (("N", "S", "Ar"), lambda p: _angle(p["N"], p["S"], p["Ar"])),
    "gonial Ar-Go-Me": (("Ar", "Go", "Me"), lambda p: _angle(p["Ar"], p["Go"], p["Me"])),
    "N-Me / S-N": (("N", "Me", "S"), lambda p: _dist(p["N"], p["Me"]) / (_dist(p["S"], p["N"]) + 1e-9)),
    "S-Go / N-Me": (("S", "Go", "N", "Me"), lambda p: _dist(p["S"], p["Go"]) / (_dist(p["N"], p["Me"]) + 1e-9)),
    "ANS-Me / N-Me": (("ANS", "Me", "N"), lambda p: _dist(p["ANS"], p["Me"]) / (_dist(p["N"], p["Me"]) + 1e-9)),
    "Pog-Gn-Me angle": (("Pog", "Gn", "Me"), lambda p: _angle(p["Pog"], p["Gn"], p["Me"])),
    "lip order UL-LL-Pog_soft": (("UL", "LL", "Pog_soft"), lambda p: _angle(p["UL"], p["LL"], p["Pog_soft"])),
    "incisors U1_tip-L1_tip / S-N": (("U1_tip", "L1_tip", "S", "N"),
                                     lambda p: _dist(p["U1_tip"], p["L1_tip"]) / (_dist(p["S"], p["N"]) + 1e-9)),
}
MM_FEATURES: dict[str, tuple[tuple[str, ...], object]] = {
    "S-N mm": (("S", "N"), lambda p: _dist(p["S"], p["N"])),
    "N-Me mm": (("N", "Me"), lambda p: _dist(p["N"], p["Me"])),
}
DIRECTIONS = {k for k in FEATURES if k.endswith("direction")}

# Mean and SD of each feature on the ISBI train split (001-150, mean of both annotators),
# written by `python -m training.quality_stats` (directions in degrees, canonical pose).
POPULATION: dict[str, tuple[float, float]] = {
    'S->N direction': (-173.209, 5.533),
    'N->Me direction': (84.763, 4.651),
    'Po->Or direction': (179.417, 5.36),
    'Go->Me direction': (151.288, 6.105),
    'Sn->Pog_soft direction': (84.306, 7.215),
    'PNS->ANS direction': (177.778, 4.939),
    'SNA': (82.5946, 3.8695),
    'SNB': (81.0911, 5.4634),
    'saddle N-S-Ar': (121.9719, 5.6111),
    'gonial Ar-Go-Me': (127.372, 6.7499),
    'N-Me / S-N': (1.8317, 0.1152),
    'S-Go / N-Me': (0.6513, 0.0504),
    'ANS-Me / N-Me': (0.5643, 0.0239),
    'Pog-Gn-Me angle': (139.5139, 8.5053),
    'lip order UL-LL-Pog_soft': (161.9506, 9.7158),
    'incisors U1_tip-L1_tip / S-N': (0.0661, 0.0433),
    'S-N mm': (58.9919, 3.1901),
    'N-Me mm': (107.9861, 7.9984),
}


def canonical_points(landmarks, width: int, height: int, k: int, flip: bool,
                     spacing_mm: tuple[float, float] | None) -> dict[str, np.ndarray]:
    """Available landmarks -> canonical pose, in mm when the spacing is known (else pixels).
    The spacing is scaled before turning (row spacing along y of the original image)."""
    out = {}
    sy, sx = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    for lm in landmarks:
        if lm.x is None or lm.y is None:
            continue
        p = forward_points(np.array([lm.x * sx, lm.y * sy]), width * sx, height * sy, k, flip)
        out[lm.name] = np.asarray(p, np.float64)
    return out


def feature_values(points: dict[str, np.ndarray], *, mm: bool) -> dict[str, float]:
    table = dict(FEATURES, **(MM_FEATURES if mm else {}))
    return {name: float(f(points)) for name, (uses, f) in table.items() if all(u in points for u in uses)}


def feature_z(values: dict[str, float]) -> dict[str, float]:
    z = {}
    for name, v in values.items():
        if name not in POPULATION:
            continue
        mean, sd = POPULATION[name]
        d = _wrap(v - mean) if name in DIRECTIONS else v - mean
        z[name] = d / sd
    return z


def judge(result) -> QualityVerdict:
    """The verdict for one InferenceResult (inference.result), from its own content."""
    predicted = [lm for lm in result.landmarks if lm.predicted and lm.available]
    reasons: list[str] = []
    kinds: list[str] = []
    fail = review = False
    signals: dict[str, float | str | bool | None] = {}

    confs = np.array([lm.confidence for lm in predicted]) if predicted else np.zeros(1)
    mean_conf = float(confs.mean())
    signals["mean_confidence"] = round(mean_conf, 4)
    low = [lm.name for lm in predicted if lm.confidence <= POINT_LOW]
    signals["low_confidence_landmarks"] = len(low)
    if not predicted:
        fail = True
        reasons.append("no landmark was predicted")
        kinds.append("nothing")
    elif mean_conf < CONF_FAIL:
        fail = True
        reasons.append(f"landmark confidences collapsed (mean {mean_conf:.2f} < {CONF_FAIL}): "
                       "the film was not recognised as a lateral cephalogram in any pose")
        kinds.append("confidence")
    elif mean_conf < CONF_REVIEW:
        review = True
        reasons.append(f"low landmark confidence overall (mean {mean_conf:.2f} < {CONF_REVIEW})")
        kinds.append("confidence")

    o = result.orientation
    spacing = result.pixel_spacing_mm
    pts = canonical_points(result.landmarks, result.width, result.height, o.rotation_k, o.flipped, spacing)
    z = feature_z(feature_values({n: p for n, p in pts.items() if n in {lm.name for lm in predicted}},
                                 mm=spacing is not None))
    signals["max_abs_z"] = round(max((abs(v) for v in z.values()), default=0.0), 2)
    far = {n: v for n, v in z.items() if abs(v) > Z_REVIEW}
    very_far = [n for n, v in z.items() if abs(v) > Z_FAIL]
    signals["implausible_features"] = len(far)
    doubtful = set(low)
    if len(very_far) >= FAIL_FEATURES:
        fail = True
        reasons.append("anatomically implausible: " + ", ".join(f"{n} (z {z[n]:+.0f})" for n in very_far[:4]))
        kinds.append("anatomy")
    elif far:
        review = True
        reasons.append("outside the population range: " + ", ".join(f"{n} (z {v:+.1f})" for n, v in far.items()))
        kinds.append("anatomy")
        for n in far:
            doubtful.update(_feature_landmarks(n))
    if low:
        review = True
        reasons.append("low-confidence landmarks: " + ", ".join(low))
        kinds.append("landmarks")
    if len(doubtful) >= DOUBTFUL_FAIL and not fail:
        fail = True
        reasons.append(f"{len(doubtful)} of {len(predicted)} landmarks doubtful")
        kinds.append("landmarks")

    pose = getattr(o, "verification", "") or ""
    signals["pose_source"] = o.source
    signals["pose_verification"] = pose or None
    signals["pose_margin"] = getattr(o, "margin", None)
    if pose == "overturned":
        # A credible tracing in another pose is kept; only a tag that contradicts the anatomy
        # needs a person (the archive's metadata is wrong, or the film is not what it says).
        if o.source == "dicom":
            review = True
            reasons.append("the DICOM Patient Orientation disagrees with the anatomy: traced in the pose "
                           "the anatomy supports")
            kinds.append("pose")
        else:
            reasons.append("pose verified: the image detector's first choice traced implausibly; "
                           "traced in the pose the anatomy supports")
    if getattr(o, "inverted", False):
        reasons.append("polarity inverted (a negative image without a MONOCHROME1 tag): traced inverted")

    signals["spacing_known"] = spacing is not None
    if spacing is None:
        reasons.append("pixel spacing unknown: mm values omitted, absolute size not checked")
    if getattr(result, "degraded", False):
        reasons.append("Stage 0 failed: traced without anatomical priors")

    verdict = FAIL if fail else REVIEW if review else PASS
    order = {n: i for i, n in enumerate(CANONICAL_25)}
    return QualityVerdict(verdict, reasons, sorted(doubtful, key=order.get) if verdict != FAIL else [],
                          signals, kinds)


def _feature_landmarks(name: str) -> tuple[str, ...]:
    return (FEATURES.get(name) or MM_FEATURES[name])[0]


def credibility(result) -> float:
    """How believable one tracing is, to choose between poses: the mean Stage 1 confidence,
    less a share for each implausible feature. Comparable between poses of one image."""
    predicted = [lm for lm in result.landmarks if lm.predicted and lm.available]
    if not predicted:
        return -1.0
    mean_conf = float(np.mean([lm.confidence for lm in predicted]))
    o = result.orientation
    pts = canonical_points(predicted, result.width, result.height, o.rotation_k, o.flipped, result.pixel_spacing_mm)
    z = feature_z(feature_values(pts, mm=result.pixel_spacing_mm is not None))
    penalty = sum(min(abs(v) / Z_FAIL, 1.0) for v in z.values() if abs(v) > Z_REVIEW) / max(len(z), 1)
    return mean_conf - penalty
