"""The measuring frame: landmark pixels -> physical coordinates with the face pointing +x.

Cephalometric conventions ("A ahead of N-Pog", "lower lip behind the E-line") are stated for a
face looking one way. Images arrive facing left or right, sometimes turned by 90 degrees, so
before measuring we bring every point into one frame: millimetres when the pixel spacing is
known (square pixel units otherwise), face to +x, head up (y grows downwards, as in images).
The turn is one of the 8 rigid 90-degree turns/mirrors, chosen from the landmarks themselves
(where the face and the chin are), so a wrong PatientOrientation cannot flip a sign.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cephnode.inference.result import InferenceResult

# Landmark groups used only to tell which way the face looks and which way is down.
ANTERIOR = ("N", "A", "ANS", "Pog", "Prn", "UL", "LL", "Sn", "Pog_soft", "B", "U1_tip", "L1_tip")
POSTERIOR = ("S", "Po", "Ar", "Ba", "Co", "Go", "PNS")
SUPERIOR = ("S", "N", "Or", "Po")
INFERIOR = ("Me", "Gn", "Pog", "B", "Go")

# The 8 orthogonal maps of the plane that keep axes on axes (turns by 90 degrees, mirrors).
_DIHEDRAL = tuple(
    np.array(m, dtype=float)
    for m in (
        [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
        [[-1, 0], [0, 1]], [[0, 1], [1, 0]], [[1, 0], [0, -1]], [[0, -1], [-1, 0]],
    )
)


class DegenerateGeometry(ValueError):
    """Two points that should span a line or an angle coincide."""


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    n = float(np.hypot(*v))
    if n < 1e-9:
        raise DegenerateGeometry(what)
    return v / n


class MissingLandmark(LookupError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class MeasuringFrame:
    """Maps source-image pixels (x = column, y = row) to the measuring frame and back."""

    scale: np.ndarray        # (2,) mm per pixel along x (columns) and y (rows); ones when unknown
    turn: np.ndarray         # (2, 2) one of _DIHEDRAL
    spacing_known: bool
    how: str                 # how the face direction was decided

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=float) * self.scale) @ self.turn.T

    def to_pixels(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=float) @ self.turn) / self.scale

    @property
    def mirrored(self) -> bool:
        return bool(np.linalg.det(self.turn) < 0)


def _mean_of(points: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray | None:
    have = [points[n] for n in names if n in points]
    return np.mean(have, axis=0) if have else None


def choose_frame(result: InferenceResult) -> MeasuringFrame:
    spacing = result.pixel_spacing_mm
    if spacing is not None:
        scale = np.array([float(spacing[1]), float(spacing[0])])  # (column, row) spacing
    else:
        scale = np.ones(2)
    pts = {lm.name: np.array([lm.x, lm.y], float) * scale for lm in result.landmarks if lm.available}
    front, back = _mean_of(pts, ANTERIOR), _mean_of(pts, POSTERIOR)
    up, down = _mean_of(pts, SUPERIOR), _mean_of(pts, INFERIOR)
    if front is not None and back is not None and up is not None and down is not None:
        forward, downward = front - back, down - up
        scores = [float((t @ forward)[0] + (t @ downward)[1]) for t in _DIHEDRAL]
        turn = _DIHEDRAL[int(np.argmax(scores))]
        how = "landmarks"
    else:
        # Too few landmarks to see the face: trust how the pipeline posed the image.
        # Canonical pose = face to the image's left, so mirror it to face +x.
        k = result.orientation.rotation_k % 4
        rot = np.linalg.matrix_power(np.array([[0.0, 1.0], [-1.0, 0.0]]), k)  # np.rot90, (x, y) image axes
        flip = np.array([[-1.0, 0.0], [0.0, 1.0]])
        turn = flip @ (flip if result.orientation.flipped else np.eye(2)) @ rot
        turn = np.round(turn)
        how = f"pipeline orientation ({result.orientation.source})"
    return MeasuringFrame(scale=scale, turn=turn, spacing_known=spacing is not None, how=how)


# --- plane geometry in the measuring frame (x anterior, y inferior) ---------------------------

def angle_between(u: np.ndarray, v: np.ndarray) -> float:
    """Unsigned angle between two direction vectors, degrees in [0, 180]."""
    u, v = _unit(u, "zero-length ray"), _unit(v, "zero-length ray")
    cross = u[0] * v[1] - u[1] * v[0]
    return float(np.degrees(np.arctan2(abs(cross), float(np.dot(u, v)))))


def anterior_normal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit normal of line a-b that points to the face side (+x)."""
    d = _unit(b - a, "line through coincident points")
    n = np.array([d[1], -d[0]])
    return n if n[0] >= 0 else -n


def signed_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance of p from line a-b, positive when p lies anterior to it."""
    return float(np.dot(p - a, anterior_normal(a, b)))


def foot_of_perpendicular(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = _unit(b - a, "line through coincident points")
    return a + np.dot(p - a, d) * d


def line_intersection(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray | None:
    d1, d2 = a2 - a1, b2 - b1
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-12:
        return None
    t = ((b1[0] - a1[0]) * d2[1] - (b1[1] - a1[1]) * d2[0]) / den
    return a1 + t * d1
