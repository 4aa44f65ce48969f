"""Where a viewer that tracks the SR's measurements writes each label, so that they stay legible.

When OHIF takes the SR's groups over as its own measurement tools (the reader is asked
"continue tracking measurements?"; dicom_io.sr_layout gives each group a tool's shape), each tool
draws its label box where the group's Text Annotation Position says (an SCOORD POINT named
(TextPosition, 99CS3D), cornerstone's SR convention, read by @cornerstonejs/adapters), else next
to its rightmost handle: at N, A, B and the incisors most boxes would start at the same few points.
So the SR says where each box goes:
- a landmark's name (one short word, "S") just beside its point;
- a measurement's value ("85.0 deg" as the tool writes it; the name is in the measurement panel)
  beside an angle's vertex or a line's middle, else further along its lines.
Greedy, landmarks first: each label takes the candidate place (8 directions, 4 distances from
each of its points) whose box overlaps least with the boxes placed before it and with the
landmarks, covers least of the drawn lines and lies closest to its point, among the places
that keep the box on the film (a few pixels inside its edge). Boxes are estimated at a
fit-to-window scale (dicom_io.sr_layout), so the layout scales with the film. Deterministic:
rebuilding an SR gives the same bytes.
"""
from __future__ import annotations

import numpy as np

from cephnode.cephalometry.analysis import Analysis
from cephnode.dicom_io.sr_layout import (ANGLE, CHAR_W, COBB_ANGLE, LENGTH, LINE_H, NOMINAL_SCREEN_HEIGHT, Drawing,
                                         box_overlaps)
from cephnode.domain.result import InferenceResult

# cornerstone's text box: 14 px text with a few pixels of padding around it (screen px)
PAD = 3.0
RADII = (10.0, 24.0, 42.0, 66.0)        # screen px between a point and the nearest edge of its box
DIRECTIONS = np.array([(np.cos(a), np.sin(a)) for a in np.radians(np.arange(0, 360, 45))])
LANDMARK_MARK = 7.0                     # screen px around a landmark that no label should cover
DISTANCE_COST = 4.0                     # a screen px further away costs this many px^2 of overlap
OFF_FILM_MARGIN = 40.0                  # screen px inside the film's edge a box must keep clear of:
                                        # OHIF 3.13 drew an arrow's label about 30 px right of and
                                        # below its TextPosition near the film's foot (pack 1.6.0's
                                        # Gn on ISBI 001), and 6 px let it fall off the screen
LINE_STEP = 6.0                         # screen px between samples of a drawn line
LINE_COST = 40.0                        # px^2 of overlap per line sample under a box
FAR_POINT = 40.0                        # screen px a label is further from its measurement when
                                        # beside a ray's middle rather than the vertex (a line's end
                                        # rather than its middle)


def _box_sizes(texts: list[str], scale: float) -> np.ndarray:
    return np.array([[(len(t) * CHAR_W + 2 * PAD) * scale, (LINE_H + 2 * PAD) * scale] for t in texts])


def _candidates(points: np.ndarray, size: np.ndarray, scale: float,
                extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the candidate boxes (n, 2) and their distance from their point plus
    that point's `extra` (screen px). A box lies on the side of the offset direction: right of
    the point for a rightward offset, centred over it for a vertical one, and so on."""
    w, h = size
    # (radius, direction) offsets of every candidate, the same for each point; the same
    # arithmetic, in the same order, as point by point and radius by radius
    d = DIRECTIONS[None] * np.asarray(RADII)[:, None, None] * scale
    shift = np.stack([w * (1 - np.sign(np.round(DIRECTIONS[:, 0], 6))) / 2,
                      h * (1 - np.sign(np.round(DIRECTIONS[:, 1], 6))) / 2], axis=1)
    corners = (points[:, None, None, :] + d[None]) - shift
    dist = np.asarray(RADII)[None, :, None] + extra[:, None, None]
    return corners.reshape(-1, 2), np.broadcast_to(dist, corners.shape[:3]).reshape(-1)


def _off_film(boxes: np.ndarray, cols: int, rows: int, margin: float = 0.0) -> np.ndarray:
    """Area of each box outside the film shrunk by `margin` on every side."""
    inside_w = np.clip(np.minimum(boxes[:, 2], cols - margin) - np.maximum(boxes[:, 0], margin), 0, None)
    inside_h = np.clip(np.minimum(boxes[:, 3], rows - margin) - np.maximum(boxes[:, 1], margin), 0, None)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inside_w * inside_h


def _samples(segments: list[tuple[np.ndarray, np.ndarray]], step: float) -> np.ndarray:
    """Points every `step` along each segment."""
    out = [np.zeros((0, 2))]
    for p, q in segments:
        n = max(int(np.hypot(*(q - p)) / step), 1)
        out.append(p + (q - p) * np.linspace(0, 1, n + 1)[:, None])
    return np.concatenate(out)


class _Samples:
    """The drawn lines' sample points, sorted by y once per report, for counting those in a box."""

    def __init__(self, points: np.ndarray) -> None:
        order = np.argsort(points[:, 1], kind="stable")
        self.xs, self.ys = points[order, 0], points[order, 1]

    def covered(self, boxes: np.ndarray) -> np.ndarray:
        """How many of the points lie in each box (x0 <= x <= x1 and y0 <= y <= y1). The points
        in a box's y-range are one run of the sorted list (two binary searches; a label box is
        one text line high, so the run is short), and only those are compared in x (issue 14:
        comparing each box with every sample near the label was half the labels' placement)."""
        lo = np.searchsorted(self.ys, boxes[:, 1], side="left")
        hi = np.searchsorted(self.ys, boxes[:, 3], side="right")
        runs = np.maximum(hi - lo, 0)
        total = int(runs.sum())
        if total == 0:
            return np.zeros(len(boxes), dtype=np.int64)
        box = np.repeat(np.arange(len(boxes)), runs)
        index = np.arange(total) - np.repeat(np.cumsum(runs) - runs, runs) + np.repeat(lo, runs)
        x = self.xs[index]
        inside = (x >= boxes[box, 0]) & (x <= boxes[box, 2])
        return np.bincount(box[inside], minlength=len(boxes))


def place_labels(labels: list[tuple[np.ndarray, str, np.ndarray]], landmarks: np.ndarray, cols: int, rows: int,
                 segments: list[tuple[np.ndarray, np.ndarray]] = ()) -> list[np.ndarray]:
    """labels: (points the label may go next to, its text, how much further each point counts
    as, in screen px) in SCOORD space, in placing order;
    landmarks: (n, 2) points no label should cover; segments: the lines drawn, which a label
    should cover as little as it can. Returns each label's position (the top-left corner of its
    box, SCOORD space)."""
    scale = rows / NOMINAL_SCREEN_HEIGHT
    lines = _Samples(_samples(list(segments), LINE_STEP * scale))
    mark = LANDMARK_MARK * scale
    placed = [np.array([[x - mark, y - mark, x + mark, y + mark] for x, y in np.reshape(landmarks, (-1, 2))])]
    sizes = _box_sizes([t for _, t, _ in labels], scale)
    out = []
    for (points, _, extra), size in zip(labels, sizes):
        corners, dist = _candidates(np.reshape(points, (-1, 2)), size, scale, np.asarray(extra, dtype=float))
        boxes = np.concatenate([corners, corners + size], axis=1)
        cost = (box_overlaps(boxes, np.concatenate(placed))
                + (DISTANCE_COST * dist + LINE_COST * lines.covered(boxes)) * scale * scale)
        # a label off the film is off the viewer's screen, where no one reads it: never chosen
        # while any place on the film is left (then the least off)
        off = _off_film(boxes, cols, rows, margin=OFF_FILM_MARGIN * scale)
        cost = np.where(off > 0, np.inf, cost) if (off == 0).any() else off
        best = int(np.argmin(cost))
        placed.append(boxes[best][None])
        out.append(corners[best])
    return out


def tool_text(tool: str, value: float, unit: str) -> str:
    """Roughly what the tool writes (cornerstone rounds to three significant figures; CobbAngle
    to two decimals; a projection radiograph's lengths read 'mm Proj'): only its width matters."""
    shown = f"{value:.2f}" if tool == COBB_ANGLE else f"{value:#.3g}".rstrip(".")
    return f"{shown} {'°' if unit == 'deg' else 'mm Proj'}"


def label_positions(result: InferenceResult, analysis: Analysis, drawings: dict[str, Drawing],
                    cols: int, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(landmark name -> position, measurement key -> position) of each label a tracking viewer
    draws: every available landmark, every measurement drawn in a tool's shape. SCOORD space."""
    lms = [lm for lm in result.landmarks if lm.available]
    points = np.array([[lm.x + 0.5, lm.y + 0.5] for lm in lms]).reshape(-1, 2)
    tracked = [m for m in analysis.measurements if m.value is not None and drawings[m.key].tool is not None]
    labels = [(p, lm.name, np.zeros(1)) for p, lm in zip(points, lms)]
    # what a tracking viewer draws: an arrow from each landmark to a tenth of the film down-right
    # (cornerstone's ArrowAnnotate reading a POINT), each tool's lines
    segments = [(p, p + np.array([cols / 10, rows / 10])) for p in points]
    for m in tracked:
        d = drawings[m.key]
        h = d.points + 0.5
        # where a reader looks for the value: an angle's at its vertex, else a line's middle;
        # failing room there, along its lines (counted as that much further away)
        if d.tool == LENGTH:
            segments.append((h[0], h[1]))
            near, far = [(h[0] + h[1]) / 2], [h[0], h[1]]
        else:
            segments += [(h[0], h[1]), (h[2], h[3])]
            mids = [(h[0] + h[1]) / 2, (h[2] + h[3]) / 2]
            near, far = ([h[1]], mids) if d.tool == ANGLE else (mids, [])
        points_at = np.array(near + far)
        extra = np.r_[np.zeros(len(near)), np.full(len(far), FAR_POINT)]
        labels.append((points_at, tool_text(d.tool, float(m.value), m.unit), extra))
    found = place_labels(labels, points, cols, rows, segments)
    return ({lm.name: p for lm, p in zip(lms, found)},
            {m.key: p for m, p in zip(tracked, found[len(lms):])})
