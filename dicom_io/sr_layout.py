"""Where each measurement's SCOORD runs, so that a viewer's labels do not pile up on the face.

The SR gives every computed measurement ONE polyline along the lines it was measured on. What
the standard leaves to us is which points of those lines the polyline uses: lines are infinite,
so an angle's rays may be drawn longer or shorter, and a line may stop at the film's edge.
OHIF 3.13's DICOMSRDisplayTool (extensions/cornerstone-dicom-sr) puts a drawing's text box at
the rightmost point of its coordinates, level with the middle of their vertical extent
(cornerstone's getTextBoxCoordsCanvas called without an element, so no overlap avoidance), and
a landmark's at the tail of an arrow it draws from a tenth of the image down-right of the point.
With every line ending on the face, 28 labels then start at N, A, B and the incisors.

So, per measurement, in the order of the report:
- a point off the film (two nearly parallel lines meet far behind the head) is replaced by
  where its lines leave the film, the two joined along the edge: nothing is drawn off the image;
- the free ends of the lines of an angle (and the reference line of a point-to-line distance)
  may be drawn further along the same line, inside the film; of those choices the one whose
  label box, estimated at a nominal fit-to-window scale, overlaps the least with the landmark
  labels and the labels already placed wins, shorter lines breaking ties.
A distance's measured segment is never lengthened: it shows the distance itself. Every landmark
point of the analysis's polyline stays on the drawn polyline, in order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cephnode.cephalometry.analysis import Analysis
from cephnode.cephalometry.analysis import Measurement as CephMeasurement
from cephnode.domain.result import InferenceResult

# OHIF's text style (cornerstone drawTextBox, 14 px Helvetica) on a film fitted to a window about
# this many screen pixels high; measured on OHIF 3.13.2 in Chromium (tests/test_viewer_ohif.py).
NOMINAL_SCREEN_HEIGHT = 1000.0
CHAR_W = 8.0        # mean advance of a 14 px Helvetica character (7.3-8.4 measured)
LINE_H = 18.0       # one line of text
BOX_DX = 25.0       # the text starts this far right of OHIF's anchor (its padding, screen px)
BOX_DY = 29.0       # ... and this far below it
EXTENSIONS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.13, 0.16, 0.2)   # of the film's height, per free end
EDGE = 1.0          # keep drawn points this many pixels inside the film


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlap(self, other: "Box") -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0


def _label_box(anchor: tuple[float, float], lines: list[str], scale: float) -> Box:
    """The text box OHIF draws for `lines` anchored at `anchor` (image px); scale = image px per screen px."""
    x0 = anchor[0] + BOX_DX * scale
    y0 = anchor[1] + BOX_DY * scale
    w = max(len(t) for t in lines) * CHAR_W * scale
    return Box(x0, y0, x0 + w, y0 + len(lines) * LINE_H * scale)


def anchor_of(points: np.ndarray) -> tuple[float, float]:
    """OHIF's text-box anchor: the rightmost x, the middle of the vertical extent."""
    return float(points[:, 0].max()), float((points[:, 1].min() + points[:, 1].max()) / 2)


def label_lines(m: CephMeasurement, unit: str) -> list[str]:
    """How OHIF writes a measurement group's label: 'meaning: value unit', two decimals."""
    return [f"{m.name}: {m.value:.2f} {unit}"]


def _inside(p: np.ndarray, cols: int, rows: int) -> bool:
    return bool(EDGE <= p[0] <= cols - EDGE and EDGE <= p[1] <= rows - EDGE)


def _clip_towards(inside: np.ndarray, outside: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Where the segment from `inside` to `outside` leaves the film."""
    d = outside - inside
    t = 1.0
    for axis, hi in ((0, cols - EDGE), (1, rows - EDGE)):
        if d[axis] > 0:
            t = min(t, (hi - inside[axis]) / d[axis])
        elif d[axis] < 0:
            t = min(t, (EDGE - inside[axis]) / d[axis])
    return inside + max(t, 0.0) * d


def _line_intersection(p1, p2, q1, q2) -> np.ndarray | None:
    d1, d2 = p2 - p1, q2 - q1
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-9 * max(1.0, float(np.hypot(*d1) * np.hypot(*d2))):
        return None
    t = ((q1[0] - p1[0]) * d2[1] - (q1[1] - p1[1]) * d2[0]) / den
    return p1 + t * d1


def _as_vertex(m: CephMeasurement, pts: np.ndarray) -> np.ndarray:
    """Two lines of an angle given as their four points (their meeting point was judged too far):
    drawn instead from each line's far point through its near point to where they meet, so the
    connector between them is no false line across the face; off-film parts are cut below."""
    if m.kind != "angle" or len(pts) != 4:
        return pts
    x = _line_intersection(*pts)
    if x is None:
        return pts
    out = []
    for a, b in ((pts[0], pts[1]), (pts[2], pts[3])):
        far, near = (a, b) if np.hypot(*(a - x)) >= np.hypot(*(b - x)) else (b, a)
        if np.dot(near - far, x - near) <= 0:        # they meet between the two points: keep as given
            return pts
        out.append((far, near))
    (f1, n1), (f2, n2) = out
    return np.array([f1, n1, x, n2, f2])


def on_film(points: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """The polyline with each off-film point replaced by where its segments leave the film."""
    out: list[np.ndarray] = []
    n = len(points)
    for i, p in enumerate(points):
        if _inside(p, cols, rows):
            out.append(p)
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < n and _inside(points[j], cols, rows):
                out.append(_clip_towards(points[j], p, cols, rows))
    # consecutive duplicates (a point clipped from both sides) add nothing
    keep = [out[0]] + [q for prev, q in zip(out, out[1:]) if np.hypot(*(q - prev)) > 1e-6]
    return np.array(keep)


def _extended(points: np.ndarray, at_start: bool, length: float, cols: int, rows: int) -> np.ndarray:
    if length <= 0:
        return points
    end, nxt = (points[0], points[1]) if at_start else (points[-1], points[-2])
    d = end - nxt
    norm = float(np.hypot(*d))
    if norm < 1e-9:
        return points
    far = end + d / norm * length
    if not _inside(far, cols, rows):
        far = _clip_towards(end, far, cols, rows)
    if np.hypot(*(far - end)) < 1.0:
        return points
    return np.vstack([far[None], points]) if at_start else np.vstack([points, far[None]])


def _free_ends(m: CephMeasurement, pts: np.ndarray) -> tuple[bool, bool]:
    """Which ends may be drawn further: the lines of an angle are lines; a point-to-line
    distance (reference line, foot, point) may lengthen its reference line only."""
    if m.kind == "angle":
        return True, True
    if m.kind == "distance" and len(pts) == 4:
        return True, False
    return False, False


def landmark_boxes(result: InferenceResult, cols: int, rows: int, scale: float) -> list[Box]:
    """Where OHIF puts each landmark's label: at the tail of its arrow (a tenth of the image
    down-right of the point), two lines ('S:' and the detection confidence)."""
    boxes = []
    for lm in result.landmarks:
        if not lm.available:
            continue
        x, y = lm.x + 0.5, lm.y + 0.5
        anchor = (x + cols / 10, y + rows / 20)
        boxes.append(_label_box(anchor, [f"{lm.name}:", f"Detection confidence: {lm.confidence:.2f} 1"], scale))
    return boxes


def measurement_polylines(result: InferenceResult, analysis: Analysis, cols: int, rows: int) -> dict[str, np.ndarray]:
    """measurement key -> the polyline to write (image px, pixel-centre coordinates like
    Measurement.polyline), for every computed measurement."""
    scale = rows / NOMINAL_SCREEN_HEIGHT
    fixed = landmark_boxes(result, cols, rows, scale)
    options: dict[str, list[tuple[float, np.ndarray, Box]]] = {}
    for m in analysis.measurements:
        if m.value is None:
            continue
        # work in SCOORD space (pixel corners) so clipping uses the film's true edges
        base = on_film(_as_vertex(m, np.asarray(m.polyline, dtype=float) + 0.5), cols, rows)
        lines = label_lines(m, m.unit)
        free_start, free_end = _free_ends(m, base)
        options[m.key] = []
        for e0 in (EXTENSIONS if free_start else (0.0,)):
            for e1 in (EXTENSIONS if free_end else (0.0,)):
                pts = _extended(_extended(base, True, e0 * rows, cols, rows), False, e1 * rows, cols, rows)
                options[m.key].append((e0 + e1, pts, _label_box(anchor_of(pts), lines, scale)))
    chosen: dict[str, int] = {}

    def cost(key: str, i: int) -> tuple[float, float]:
        ext, _, box = options[key][i]
        hit = sum(box.overlap(b) for b in fixed)
        hit += sum(box.overlap(options[k][j][2]) for k, j in chosen.items() if k != key)
        # a label running far off the film's right edge leaves the viewport
        spill = max(0.0, box.x1 - 1.2 * cols) * (box.y1 - box.y0)
        return hit + spill, ext

    # greedy in report order, then a second pass that sees every other label
    for _ in range(2):
        for key in options:
            chosen[key] = min(range(len(options[key])), key=lambda i: cost(key, i))
    return {key: options[key][i][1] - 0.5 for key, i in chosen.items()}
