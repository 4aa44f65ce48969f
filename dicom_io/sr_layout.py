"""Where each measurement's SCOORD runs, so that a viewer's labels do not pile up on the face.

The SR gives every computed measurement ONE polyline along the lines it was measured on. What
the standard leaves to us is which points of those lines the polyline uses: lines are infinite,
so an angle's rays may be drawn longer or shorter, and a line may stop at the film's edge.
OHIF 3.13's DICOMSRDisplayTool (extensions/cornerstone-dicom-sr) puts a drawing's text box at
the rightmost point of its coordinates, level with the middle of their vertical extent
(cornerstone's getTextBoxCoordsCanvas called without an element, so no overlap avoidance), and
a landmark's at the tail of an arrow it draws from a tenth of the image down-right of the point.
With every line ending on the face, 28 labels then start at N, A, B and the incisors.

So, per measurement:
- a point off the film (two nearly parallel lines meet far behind the head) is replaced by
  where its lines leave the film, the two joined along the edge: nothing is drawn off the image;
- the free ends of an angle's lines (and the reference line of a point-to-line distance) may be
  drawn up to 30 % of the film's height further along the same line, and one ray of an angle
  drawn as [a, vertex, b] may run on through the vertex (the polyline goes there and back);
- the label box each choice gives is estimated at a nominal fit-to-window scale (position and
  size agree with OHIF's SVG to within a pixel); the choice wins whose label overlaps least with
  the landmark labels and the other measurement labels, each 16-character label's worth of
  overlap costing as much as half the film's height of added line, and a label running past
  the film's right edge (out of a narrow viewport) costing its overflow. Greedy in the report's
  order, then passes that see every other label until nothing changes (at most 4).
A distance's measured segment is never lengthened: it shows the distance itself. Every landmark
point of the analysis's polyline stays on the drawn polyline. The result depends only on the
landmarks and the film's size, so rebuilding an SR gives the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cephnode.cephalometry.analysis import Analysis
from cephnode.cephalometry.analysis import Measurement as CephMeasurement
from cephnode.dicom_io.codes import LANDMARK_CONFIDENCE
from cephnode.domain.result import InferenceResult

# OHIF's text style (cornerstone drawTextBox, 14 px Helvetica) on a film fitted to a window about
# this many screen pixels high; measured on OHIF 3.13.2 in Chromium (tests/test_viewer_ohif.py).
NOMINAL_SCREEN_HEIGHT = 1000.0
CHAR_W = 8.0        # mean advance of a 14 px Helvetica character (7.3-8.4 measured)
LINE_H = 18.0       # one line of text
BOX_DX = 25.0       # the text starts this far right of OHIF's anchor (its padding, screen px)
BOX_DY = 29.0       # ... and this far below it
EXTENSIONS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3)   # of the film's height
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


def _ray_end(start: np.ndarray, towards: np.ndarray, length: float, cols: int, rows: int) -> np.ndarray | None:
    """The point `length` beyond `start`, on the line from `towards` through `start`, kept on the
    film; None when that adds nothing."""
    d = start - towards
    norm = float(np.hypot(*d))
    if length <= 0 or norm < 1e-9:
        return None
    far = start + d / norm * length
    if not _inside(far, cols, rows):
        far = _clip_towards(start, far, cols, rows)
    return far if np.hypot(*(far - start)) >= 1.0 else None


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
        boxes.append(_label_box(anchor, [f"{lm.name}:", f"{LANDMARK_CONFIDENCE.meaning}: {lm.confidence:.2f} 1"], scale))
    return boxes


@dataclass
class _Options:
    """The drawings allowed for one measurement, as the extra points each choice adds: a start
    extension (index i), an end extension (j), a ray through the vertex (k). Anchors of all
    i x j x k combinations are computed at once; only the chosen polyline is built."""
    base: np.ndarray
    starts: list[tuple[float, np.ndarray | None]]
    ends: list[tuple[float, np.ndarray | None]]
    spurs: list[tuple[float, int, np.ndarray | None]]

    def anchors_and_lengths(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, added length) per combination, flattened in (i, j, k) order."""
        def pts(items):
            return np.array([self.base[0] if p is None else p for *_, p in items])
        s, e, v = pts(self.starts), pts(self.ends), pts(self.spurs)
        i, j, k = np.ix_(range(len(s)), range(len(e)), range(len(v)))
        x = np.maximum(np.maximum(s[i, 0], e[j, 0]), np.maximum(v[k, 0], self.base[:, 0].max()))
        lo = np.minimum(np.minimum(s[i, 1], e[j, 1]), np.minimum(v[k, 1], self.base[:, 1].min()))
        hi = np.maximum(np.maximum(s[i, 1], e[j, 1]), np.maximum(v[k, 1], self.base[:, 1].max()))
        ext = (np.array([t[0] for t in self.starts])[i] + np.array([t[0] for t in self.ends])[j]
               + np.array([t[0] for t in self.spurs])[k])
        return x.ravel(), ((lo + hi) / 2).ravel(), ext.ravel()

    def polyline(self, flat: int) -> np.ndarray:
        i, j, k = np.unravel_index(flat, (len(self.starts), len(self.ends), len(self.spurs)))
        pts = self.base
        _, ray, far = self.spurs[k]
        if far is not None:
            a, v, b = pts
            pts = np.array([a, v, far, v, b])
        if self.starts[i][1] is not None:
            pts = np.vstack([self.starts[i][1][None], pts])
        if self.ends[j][1] is not None:
            pts = np.vstack([pts, self.ends[j][1][None]])
        return pts


def _options(m: CephMeasurement, base: np.ndarray, cols: int, rows: int) -> _Options:
    free_start, free_end = _free_ends(m, base)
    starts = [(e, _ray_end(base[0], base[1], e * rows, cols, rows)) for e in (EXTENSIONS if free_start else (0.0,))]
    ends = [(e, _ray_end(base[-1], base[-2], e * rows, cols, rows)) for e in (EXTENSIONS if free_end else (0.0,))]
    spurs: list[tuple[float, int, np.ndarray | None]] = [(0.0, -1, None)]
    if m.kind == "angle" and len(base) == 3:
        for ray in (0, 1):
            for e in EXTENSIONS[1::2]:
                far = _ray_end(base[1], base[0] if ray == 0 else base[2], e * rows, cols, rows)
                if far is not None:
                    spurs.append((e, ray, far))
    return _Options(base, starts, ends, spurs)


def _overlaps(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Total overlap area of each box (n, 4: x0 y0 x1 y1) with all of `others` (m, 4)."""
    if len(others) == 0:
        return np.zeros(len(boxes))
    w = np.minimum(boxes[:, None, 2], others[None, :, 2]) - np.maximum(boxes[:, None, 0], others[None, :, 0])
    h = np.minimum(boxes[:, None, 3], others[None, :, 3]) - np.maximum(boxes[:, None, 1], others[None, :, 1])
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def measurement_polylines(result: InferenceResult, analysis: Analysis, cols: int, rows: int) -> dict[str, np.ndarray]:
    """measurement key -> the polyline to write (image px, pixel-centre coordinates like
    Measurement.polyline), for every computed measurement."""
    scale = rows / NOMINAL_SCREEN_HEIGHT
    fixed = np.array([[b.x0, b.y0, b.x1, b.y1] for b in landmark_boxes(result, cols, rows, scale)]).reshape(-1, 4)
    # overlapping a 16-character label entirely costs as much as half the film's height of added line
    per_height = (LINE_H * scale) * (16 * CHAR_W * scale) / 0.5
    keys, polys, boxes, costs = [], [], [], []
    for m in analysis.measurements:
        if m.value is None:
            continue
        # work in SCOORD space (pixel corners) so clipping uses the film's true edges
        base = on_film(_as_vertex(m, np.asarray(m.polyline, dtype=float) + 0.5), cols, rows)
        lines = label_lines(m, m.unit)
        opts = _options(m, base, cols, rows)
        ax, ay, ext = opts.anchors_and_lengths()
        x0, y0 = ax + BOX_DX * scale, ay + BOX_DY * scale
        w, h = max(len(t) for t in lines) * CHAR_W * scale, len(lines) * LINE_H * scale
        bx = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
        # a label running far off the film's right edge leaves the viewport
        spill = np.clip(bx[:, 2] - 1.1 * cols, 0, None) * h
        keys.append(m.key)
        polys.append(opts)
        boxes.append(bx)
        costs.append(_overlaps(bx, fixed) + spill + ext * per_height)
    chosen = [int(np.argmin(c)) for c in costs]          # each alone; then each against the others
    for _ in range(4):
        changed = False
        for i in range(len(keys)):
            others = np.array([boxes[j][chosen[j]] for j in range(len(keys)) if j != i]).reshape(-1, 4)
            best = int(np.argmin(costs[i] + _overlaps(boxes[i], others)))
            changed |= best != chosen[i]
            chosen[i] = best
        if not changed:
            break
    return {k: polys[i].polyline(chosen[i]) - 0.5 for i, k in enumerate(keys)}
