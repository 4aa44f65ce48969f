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
- its points are put in the shape of the OHIF tool that can take it over when the SR is tracked
  (Angle, CobbAngle, Length; see _tool_shape), if that tool would show the SR's value;
- a point off the film (two nearly parallel lines meet far behind the head) is replaced by
  where its lines leave the film: nothing is drawn off the image;
- the free ends of an angle's lines (and both ends of the reference line of a point-to-line
  distance) may be moved up to 30 % of the film's height further along the same line (moved,
  not added: the drawing keeps its tool's shape);
- the label box each choice gives is estimated at a nominal fit-to-window scale (position and
  size agree with OHIF's SVG to within a pixel); the choice wins whose label overlaps least with
  the landmark labels and the other measurement labels, each 16-character label's worth of
  overlap costing as much as half the film's height of added line, and a label running past
  the film's right edge (out of a narrow viewport) costing its overflow. Greedy in the report's
  order, then passes that see every other label until nothing changes (at most 4).
A distance's measured segment is never lengthened: it shows the distance itself. Every landmark
point of the analysis's polyline stays on the drawn polyline. The result depends only on the
landmarks, the pixel spacing and the film's size, so rebuilding an SR gives the same bytes.
Where a tracking viewer writes the labels is dicom_io.sr_labels's job.
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
    """How OHIF writes a measurement group's label before it tracks them: 'meaning: value unit',
    two decimals."""
    return [f"{m.name}: {m.value:.2f} {unit}"]


def _on_film(points: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Whether each point ((..., 2)) is on the film, EDGE pixels inside its border."""
    x, y = points[..., 0], points[..., 1]
    return (EDGE <= x) & (x <= cols - EDGE) & (EDGE <= y) & (y <= rows - EDGE)


def _inside(p: np.ndarray, cols: int, rows: int) -> bool:
    """_on_film for one point, in plain comparisons (called in loops, point by point)."""
    return bool(EDGE <= p[0] <= cols - EDGE and EDGE <= p[1] <= rows - EDGE)


def _clip_towards(inside: np.ndarray, outside: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Where the segment from `inside` to `outside` leaves the film; `outside` may be one point
    (2,) or several (n, 2)."""
    d = np.asarray(outside) - inside
    t = np.ones(d.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, hi in ((0, cols - EDGE), (1, rows - EDGE)):
            da = d[..., axis]
            t = np.where(da > 0, np.minimum(t, (hi - inside[axis]) / da),
                         np.where(da < 0, np.minimum(t, (EDGE - inside[axis]) / da), t))
    return inside + np.maximum(t, 0.0)[..., None] * d


def _line_intersection(p1, p2, q1, q2) -> np.ndarray | None:
    d1, d2 = p2 - p1, q2 - q1
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-9 * max(1.0, float(np.hypot(*d1) * np.hypot(*d2))):
        return None
    t = ((q1[0] - p1[0]) * d2[1] - (q1[1] - p1[1]) * d2[0]) / den
    return p1 + t * d1


# Cornerstone3D tools (OHIF's measurement tools) whose shape a drawing may take; see _tool_shape.
ANGLE, COBB_ANGLE, LENGTH = "Angle", "CobbAngle", "Length"


@dataclass(frozen=True)
class Drawing:
    """Where one measurement is drawn: `points` in pixel-centre coordinates (like
    Measurement.polyline), and the OHIF tool whose shape they have (None: no tool fits)."""
    points: np.ndarray
    tool: str | None


def _far_near(pts: np.ndarray) -> np.ndarray:
    """Two lines (p1 p2, p3 p4) ordered far, near, near, far from where they meet, so that a
    viewer joining all four points joins the two near ends (the shortest connector)."""
    x = _line_intersection(*pts)
    if x is None:
        return pts
    a, b = sorted(pts[:2], key=lambda q: -float(np.hypot(*(q - x))))
    c, d = sorted(pts[2:], key=lambda q: float(np.hypot(*(q - x))))
    return np.array([a, b, c, d])


def _degrees(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(abs(u[0] * v[1] - u[1] * v[0]), float(np.dot(u, v)))))


def tool_value(tool: str, pts: np.ndarray, spacing: tuple[float, float]) -> float:
    """What OHIF's tool shows for a drawing in its shape: it measures the drawing again on the
    image (mm from the image's pixel spacing, `spacing` = (row, column) mm) rather than show the
    SR's value. Angle: the angle at the vertex (points 0, 1, 3 of [a, v, v, b]); CobbAngle: the
    angle between the two lines, each pointed at the end where they come closest (cornerstone's
    CobbAngleTool); Length: the distance between the first two points."""
    p = np.asarray(pts, dtype=float) * np.array([spacing[1], spacing[0]])
    if tool == LENGTH:
        return float(np.hypot(*(p[1] - p[0])))
    if tool == ANGLE:
        return _degrees(p[0] - p[1], p[3] - p[1])
    i, j = min(((i, j) for i in (0, 1) for j in (2, 3)), key=lambda ij: float(np.hypot(*(p[ij[0]] - p[ij[1]]))))
    return _degrees(p[i] - p[1 - i], p[j] - p[5 - j])


# A tool's own reading of the drawing must agree with the SR's value this closely (deg or mm);
# the analysis and the tool measure the same points, so they agree to rounding when they agree.
TOOL_AGREEMENT = 0.005


def _tool_shape(m: CephMeasurement, pts: np.ndarray, cols: int, rows: int,
                spacing: tuple[float, float]) -> tuple[str | None, np.ndarray]:
    """The polyline in the shape one of OHIF's measurement tools reads back from an SR (its
    Cornerstone3D adapter takes the first points of the NUM's SCOORD), else the plain polyline:
    - an angle at a vertex [a, v, b]: Angle, written [a, v, v, b] (the adapter reads points 0, 1, 3);
    - an angle between two lines [p1 p2 p3 p4] (or one whose vertex is off the film, cut at the
      film's edge): CobbAngle, the lines (p1, p2) and (p3, p4);
    - a point-to-point distance: Length; a point-to-line distance [a, b, foot, q]: Length from
      q to its foot, written [q, foot, a, b] so the reference line follows on the same polyline.
    A tool is used only when what it measures on the drawing is the SR's value (tool_value):
    it shows no sign (a negative ANB or A to N-perp) and knows only its own definition of an
    angle (Downs' convexity is 180 degrees minus the angle at A). Those, and what no tool measures (FMIA, Bjork sum, the Co
    difference, the Jarabak ratio), are drawn plainly. Every point of a tool's shape is on the film."""
    candidates: list[tuple[str, np.ndarray]] = []
    n = len(pts)
    if m.kind == "angle" and n == 3:
        if _inside(pts[1], cols, rows):
            vertex = np.array([pts[0], pts[1], pts[1], pts[2]])
            candidates = [(ANGLE, vertex)]
        else:
            candidates = [(COBB_ANGLE, on_film(pts, cols, rows))]
    elif m.kind == "angle" and n == 4:
        candidates = [(COBB_ANGLE, _far_near(pts))]
    elif m.kind == "distance" and n == 2:
        candidates = [(LENGTH, pts)]
    elif m.kind == "distance" and n == 4:
        a, b, foot, q = pts
        candidates = [(LENGTH, np.array([q, foot, a, b]))]
    for tool, shaped in candidates:
        if ((tool != COBB_ANGLE or len(shaped) == 4) and all(_inside(p, cols, rows) for p in shaped)
                and abs(tool_value(tool, shaped, spacing) - float(m.value)) <= TOOL_AGREEMENT):
            return tool, shaped
    if m.kind == "distance" and n == 4:          # drawn in the same order, tool or not
        return None, on_film(candidates[0][1], cols, rows)
    return None, on_film(pts, cols, rows)


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


def _ray_ends(start: np.ndarray, towards: np.ndarray, lengths: np.ndarray, cols: int,
              rows: int) -> list[np.ndarray | None]:
    """For each length: the point that far beyond `start`, on the line from `towards` through
    `start`, kept on the film; None where that adds nothing (a length of 0, or less than a
    pixel left on the film). All lengths at once: one vector operation per step instead of a
    dozen scalar ones per length, which cost 5 ms per report (issue 14)."""
    d = start - towards
    norm = float(np.hypot(*d))
    if norm < 1e-9:
        return [None] * len(lengths)
    far = start + (d / norm)[None, :] * lengths[:, None]
    off = ~_on_film(far, cols, rows)
    if off.any():
        far = np.where(off[:, None], _clip_towards(start, far, cols, rows), far)
    moved = np.hypot(far[:, 0] - start[0], far[:, 1] - start[1])
    return [f if (length > 0 and m >= 1.0) else None for f, length, m in zip(far, lengths, moved)]


def _free_ends(m: CephMeasurement, pts: np.ndarray) -> tuple[int | None, int | None]:
    """Which points may be moved further out along their line (index of the first and of the
    last such point, None: none): the lines of an angle are lines, both its ends; a point-to-
    line distance drawn [point, foot, a, b] may lengthen its reference line only, at a and b."""
    if m.kind == "angle":
        return 0, len(pts) - 1
    if m.kind == "distance" and len(pts) == 4:
        return 2, 3
    return None, None


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
    """The drawings allowed for one measurement: one point (`start_at`) moved further out along
    its line (index i), the last point likewise (j). Moving a point keeps the number of points,
    so a drawing keeps its tool's shape. Anchors of all i x j combinations are computed at
    once; only the chosen polyline is built."""
    base: np.ndarray
    starts: list[tuple[float, np.ndarray | None]]
    ends: list[tuple[float, np.ndarray | None]]
    start_at: int = 0

    def anchors_and_lengths(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, added length) per combination, flattened in (i, j) order. A moved end lies
        beyond the point it replaces, so the base's points can stay in the extent."""
        def pts(items):
            return np.array([self.base[0] if p is None else p for _, p in items])
        s, e = pts(self.starts), pts(self.ends)
        i, j = np.ix_(range(len(s)), range(len(e)))
        x = np.maximum(np.maximum(s[i, 0], e[j, 0]), self.base[:, 0].max())
        lo = np.minimum(np.minimum(s[i, 1], e[j, 1]), self.base[:, 1].min())
        hi = np.maximum(np.maximum(s[i, 1], e[j, 1]), self.base[:, 1].max())
        ext = np.array([t[0] for t in self.starts])[i] + np.array([t[0] for t in self.ends])[j]
        return x.ravel(), ((lo + hi) / 2).ravel(), ext.ravel()

    def polyline(self, flat: int) -> np.ndarray:
        i, j = np.unravel_index(flat, (len(self.starts), len(self.ends)))
        pts = self.base.copy()
        if self.starts[i][1] is not None:
            pts[self.start_at] = self.starts[i][1]
        if self.ends[j][1] is not None:
            pts[-1] = self.ends[j][1]
        return pts


def _options(m: CephMeasurement, base: np.ndarray, cols: int, rows: int) -> _Options:
    first, last = _free_ends(m, base)
    # the first free point moves away from its neighbour on its line (the next point, or for
    # a reference line [.., a, b] from b), the last away from the point before it
    at = first or 0
    away = at + 1 if at + 1 < len(base) and at != len(base) - 1 else at - 1
    def moves(extensions, start, towards):
        e = np.asarray(extensions)
        return list(zip(extensions, _ray_ends(start, towards, e * rows, cols, rows)))

    starts = moves(EXTENSIONS if first is not None else (0.0,), base[at], base[away])
    ends = moves(EXTENSIONS if last is not None else (0.0,), base[-1], base[-2])
    return _Options(base, starts, ends, at)


def box_overlaps(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Total overlap area of each box (n, 4: x0 y0 x1 y1) with all of `others` (m, 4)."""
    if len(others) == 0:
        return np.zeros(len(boxes))
    w = np.minimum(boxes[:, None, 2], others[None, :, 2]) - np.maximum(boxes[:, None, 0], others[None, :, 0])
    h = np.minimum(boxes[:, None, 3], others[None, :, 3]) - np.maximum(boxes[:, None, 1], others[None, :, 1])
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def measurement_drawings(result: InferenceResult, analysis: Analysis, cols: int, rows: int) -> dict[str, Drawing]:
    """measurement key -> where to draw it (image px, pixel-centre coordinates like
    Measurement.polyline) and in which tool's shape, for every computed measurement."""
    scale = rows / NOMINAL_SCREEN_HEIGHT
    spacing = result.pixel_spacing_mm or (1.0, 1.0)      # without it angles assume square pixels, as OHIF does
    fixed = np.array([[b.x0, b.y0, b.x1, b.y1] for b in landmark_boxes(result, cols, rows, scale)]).reshape(-1, 4)
    # overlapping a 16-character label entirely costs as much as half the film's height of added line
    per_height = (LINE_H * scale) * (16 * CHAR_W * scale) / 0.5
    keys, tools, polys, boxes, costs = [], [], [], [], []
    for m in analysis.measurements:
        if m.value is None:
            continue
        # work in SCOORD space (pixel corners) so clipping uses the film's true edges
        tool, base = _tool_shape(m, np.asarray(m.polyline, dtype=float) + 0.5, cols, rows, spacing)
        lines = label_lines(m, m.unit)
        opts = _options(m, base, cols, rows)
        ax, ay, ext = opts.anchors_and_lengths()
        x0, y0 = ax + BOX_DX * scale, ay + BOX_DY * scale
        w, h = max(len(t) for t in lines) * CHAR_W * scale, len(lines) * LINE_H * scale
        bx = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
        # a label running far off the film's right edge leaves the viewport
        spill = np.clip(bx[:, 2] - 1.1 * cols, 0, None) * h
        keys.append(m.key)
        tools.append(tool)
        polys.append(opts)
        boxes.append(bx)
        costs.append(box_overlaps(bx, fixed) + spill + ext * per_height)
    chosen = [int(np.argmin(c)) for c in costs]          # each alone; then each against the others
    chosen_boxes = np.array([boxes[i][c] for i, c in enumerate(chosen)]).reshape(-1, 4)
    for _ in range(4):
        changed = False
        for i in range(len(keys)):
            others = np.delete(chosen_boxes, i, axis=0)
            best = int(np.argmin(costs[i] + box_overlaps(boxes[i], others)))
            changed |= best != chosen[i]
            chosen[i] = best
            chosen_boxes[i] = boxes[i][best]
        if not changed:
            break
    return {k: Drawing(polys[i].polyline(chosen[i]) - 0.5, tools[i]) for i, k in enumerate(keys)}
