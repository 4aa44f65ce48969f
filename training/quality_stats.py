"""Population statistics of inference.quality's plausibility features, from the ISBI train split.

`python -m training.quality_stats` prints the POPULATION table pasted into inference/quality.py:
mean and SD of each feature over images 001-150 (mean of both annotators) in the canonical pose
(ISBI films face right: mirrored), mm from the data's own pixel spacing. Test images are never
used, so the quality gate is calibrated without seeing test1's labels.
"""
from __future__ import annotations

import numpy as np

from cephnode.domain.landmarks import ISBI_19
from cephnode.inference.quality import DIRECTIONS, canonical_points, feature_values
from cephnode.domain.result import Landmark
from cephnode.training import isbi


def population() -> dict[str, tuple[float, float]]:
    spacing = isbi.pixel_spacing_mm()
    w, h = isbi.metadata()["image_size"]
    values: dict[str, list[float]] = {}
    for case in isbi.load_cases("train"):
        lms = [Landmark(n, float(x), float(y), 1.0, "high", True) for n, (x, y) in zip(ISBI_19, case.mean)]
        pts = canonical_points(lms, w, h, 0, True, spacing)
        for name, v in feature_values(pts, mm=True).items():
            values.setdefault(name, []).append(v)
    out = {}
    for name, vs in values.items():
        a = np.asarray(vs)
        if name in DIRECTIONS:        # circular mean (directions lie near +-180 for some features)
            m = np.degrees(np.arctan2(np.sin(np.radians(a)).mean(), np.cos(np.radians(a)).mean()))
            d = (a - m + 180.0) % 360.0 - 180.0
            out[name] = (round(float(m), 3), round(float(d.std()), 3))
        else:
            out[name] = (round(float(a.mean()), 4), round(float(a.std()), 4))
    return out


if __name__ == "__main__":
    print("POPULATION: dict[str, tuple[float, float]] = {")
    for k, (m, s) in population().items():
        print(f"    {k!r}: ({m}, {s}),")
    print("}")
