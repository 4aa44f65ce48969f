"""Cephalometric analyses (shared/spec/analysis.md) computed from one landmark result.

Every row of the spec's table becomes a Measurement: computed when its landmarks (and, for mm,
the pixel spacing) are there, otherwise kept with value None and the reason it was left out,
so a report can say what it could not measure instead of silently dropping it.

Angle conventions (vectors in the measuring frame, face +x, y down) were chosen so that an
average face lands on the spec's norms; each definition says which rays it compares.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cephnode.cephalometry.frame import (
    DegenerateGeometry,
    MeasuringFrame,
    MissingLandmark,
    angle_between,
    choose_frame,
    foot_of_perpendicular,
    line_intersection,
    signed_distance,
)
from cephnode.domain.result import InferenceResult
from cephnode.domain.flags import Caveat, MeasurementFlag

UNITS = {"angle": "deg", "distance": "mm", "ratio": "%"}


@dataclass(frozen=True)
class Norm:
    mean: float | None = None
    sd: float | None = None
    low: float | None = None     # a stated range instead of (or besides) mean +- SD
    high: float | None = None
    text: str = ""


@dataclass(frozen=True)
class Measurement:
    key: str                          # stable identifier, e.g. "steiner.sna"
    name: str                         # as orthodontists write it, e.g. "SNA"
    analysis: str                     # "Steiner", "Downs", ...
    kind: str                         # "angle" | "distance" | "ratio"
    unit: str                         # UCUM: "deg" | "mm" | "%"
    value: float | None               # None when left out
    norm: Norm
    deviation_sd: float | None        # (value - mean) / SD, when the norm has an SD
    landmarks: tuple[str, ...]
    flags: tuple[MeasurementFlag, ...] = ()   # low-confidence:Pog, rule-based:Prn, unavailable:Co, ...
    omitted_reason: str = ""
    # What to draw: one open polyline in SOURCE-image pixels (x, y) along the lines measured on.
    polyline: tuple[tuple[float, float], ...] = ()
    definition: str = ""

    @property
    def computed(self) -> bool:
        return self.value is not None

    @property
    def status(self) -> str:
        """'within', 'above', 'below' the norm, or 'no-norm' / 'omitted'."""
        if self.value is None:
            return "omitted"
        n = self.norm
        if n.sd is not None and n.mean is not None:
            d = (self.value - n.mean) / n.sd
            return "within" if abs(d) <= 1 else ("above" if d > 0 else "below")
        if n.low is not None and n.high is not None:
            return "within" if n.low <= self.value <= n.high else ("above" if self.value > n.high else "below")
        return "no-norm"

    @property
    def severity(self) -> int:
        """0 within the norm (or no norm), 1 beyond 1 SD or outside a range, 2 beyond 2 SD."""
        if self.status in ("within", "no-norm", "omitted"):
            return 0
        if self.deviation_sd is not None and abs(self.deviation_sd) > 2:
            return 2
        return 1


@dataclass(frozen=True)
class Classification:
    key: str                   # "skeletal_class", "vertical_fma", ...
    name: str                  # "Skeletal class (ANB)"
    basis: str                 # key of the measurement it is read from
    value: float | None
    category: str | None       # e.g. "Class II", "hyperdivergent"; None when the basis is missing
    bands: str                 # how the categories are cut
    omitted_reason: str = ""


@dataclass
class Analysis:
    measurements: list[Measurement]
    classifications: list[Classification]
    spacing_known: bool
    frame: str                         # how the face direction was decided
    notes: list[str] = field(default_factory=list)

    @property
    def computed(self) -> list[Measurement]:
        return [m for m in self.measurements if m.computed]

    @property
    def omitted(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.computed]

    def get(self, key: str) -> Measurement:
        for m in self.measurements:
            if m.key == key:
                return m
        raise KeyError(key)


# --- measurement definitions -----------------------------------------------------------------

P = Callable[[str], np.ndarray]     # landmark name -> point in the measuring frame
Result = tuple[float, list[np.ndarray]]   # value, polyline in the measuring frame


def _angle_at(a: str, v: str, b: str) -> Callable[[P], Result]:
    def f(p: P) -> Result:
        return angle_between(p(a) - p(v), p(b) - p(v)), [p(a), p(v), p(b)]
    return f


def _two_lines(p: P, r1: tuple[np.ndarray, np.ndarray], r2: tuple[np.ndarray, np.ndarray]) -> Result:
    """Angle between ray r1 (from, to) and ray r2, drawn as the two lines meeting at their
    intersection when that lies near the face, else as the four points in order."""
    value = angle_between(r1[1] - r1[0], r2[1] - r2[0])
    x = line_intersection(r1[0], r1[1], r2[0], r2[1])
    pts = np.array([r1[0], r1[1], r2[0], r2[1]])
    span = float(np.ptp(pts, axis=0).max())
    if x is not None and np.all(np.abs(x - pts.mean(axis=0)) < 1.5 * span):
        # draw each line from its far end to the vertex
        far1 = max(r1, key=lambda q: float(np.hypot(*(q - x))))
        far2 = max(r2, key=lambda q: float(np.hypot(*(q - x))))
        return value, [far1, x, far2]
    return value, list(pts)


def _lines(a: tuple[str, str], b: tuple[str, str]) -> Callable[[P], Result]:
    def f(p: P) -> Result:
        return _two_lines(p, (p(a[0]), p(a[1])), (p(b[0]), p(b[1])))
    return f


def _point_to_line(pt: str, a: str, b: str) -> Callable[[P], Result]:
    def f(p: P) -> Result:
        q, la, lb = p(pt), p(a), p(b)
        return signed_distance(q, la, lb), [la, lb, foot_of_perpendicular(q, la, lb), q]
    return f


def _point_to_point(a: str, b: str) -> Callable[[P], Result]:
    def f(p: P) -> Result:
        return float(np.hypot(*(p(b) - p(a)))), [p(a), p(b)]
    return f


def _anb(p: P) -> Result:
    sna = angle_between(p("S") - p("N"), p("A") - p("N"))
    snb = angle_between(p("S") - p("N"), p("B") - p("N"))
    return sna - snb, [p("A"), p("N"), p("B")]


def _downs_convexity(p: P) -> Result:
    n, a, pog = p("N"), p("A"), p("Pog")
    bend = 180.0 - angle_between(n - a, pog - a)
    sign = 1.0 if signed_distance(a, n, pog) >= 0 else -1.0
    return sign * bend, [n, a, pog]


def _ab_plane(p: P) -> Result:
    a, b, n, pog = p("A"), p("B"), p("N"), p("Pog")
    value, line = _two_lines(p, (a, b), (n, pog))
    # Negative when B lies behind A, judged along the facial line's direction.
    sign = -1.0 if signed_distance(b, a, a + (pog - n)) < 0 else 1.0
    return sign * value, line


def _n_perp(pt: str) -> Callable[[P], Result]:
    """Distance of a point from the perpendicular to FH through N (McNamara)."""
    def f(p: P) -> Result:
        fh = p("Or") - p("Po")
        down = np.array([-fh[1], fh[0]])
        down = down if down[1] >= 0 else -down
        if float(np.hypot(*down)) < 1e-9:
            raise DegenerateGeometry("Po and Or coincide")
        n = p("N")
        n2 = n + down / np.hypot(*down) * max(float(np.hypot(*(p(pt) - n))), 1.0)
        q = p(pt)
        return signed_distance(q, n, n2), [n, n2, foot_of_perpendicular(q, n, n2), q]
    return f


def _co_difference(p: P) -> Result:
    co, a, gn = p("Co"), p("A"), p("Gn")
    return float(np.hypot(*(gn - co)) - np.hypot(*(a - co))), [a, co, gn]


def _fmia(p: P) -> Result:
    fma = angle_between(p("Or") - p("Po"), p("Me") - p("Go"))
    impa = angle_between(p("L1_tip") - p("L1_root"), p("Go") - p("Me"))
    return 180.0 - fma - impa, [p("Po"), p("Or"), p("L1_tip"), p("L1_root"), p("Me"), p("Go")]


def _bjork_sum(p: P) -> Result:
    s, n, ar, go, me = p("S"), p("N"), p("Ar"), p("Go"), p("Me")
    total = (angle_between(n - s, ar - s) + angle_between(s - ar, go - ar) + angle_between(ar - go, me - go))
    return total, [n, s, ar, go, me]


def _jarabak(p: P) -> Result:
    s, go, n, me = p("S"), p("Go"), p("N"), p("Me")
    front = float(np.hypot(*(me - n)))
    if front < 1e-9:
        raise DegenerateGeometry("N and Me coincide")
    return 100.0 * float(np.hypot(*(go - s))) / front, [s, go, me, n]


@dataclass(frozen=True)
class Definition:
    key: str
    name: str
    analysis: str
    kind: str
    landmarks: tuple[str, ...]
    compute: Callable[[P], Result]
    norm: Norm
    definition: str


def _d(key, name, analysis, kind, landmarks, compute, norm, definition) -> Definition:
    return Definition(key, name, analysis, kind, tuple(landmarks.split()), compute, norm, definition)


DEFINITIONS: tuple[Definition, ...] = (
    _d("steiner.sna", "SNA", "Steiner", "angle", "S N A", _angle_at("S", "N", "A"),
       Norm(82, 2, text="82 +- 2 deg"), "angle S-N-A"),
    _d("steiner.snb", "SNB", "Steiner", "angle", "S N B", _angle_at("S", "N", "B"),
       Norm(80, 2, text="80 +- 2 deg"), "angle S-N-B"),
    _d("steiner.anb", "ANB", "Steiner", "angle", "S N A B", _anb,
       Norm(2, 2, text="2 +- 2 deg"), "SNA - SNB, signed"),
    _d("steiner.sn_gogn", "SN-GoGn", "Steiner", "angle", "S N Go Gn", _lines(("S", "N"), ("Go", "Gn")),
       Norm(32, 5, text="32 +- 5 deg"), "S->N vs Go->Gn"),
    _d("steiner.u1_na_deg", "U1-NA (angle)", "Steiner", "angle", "U1_root U1_tip N A",
       _lines(("N", "A"), ("U1_root", "U1_tip")), Norm(22, text="22 deg"), "N->A vs U1 axis (root->tip)"),
    _d("steiner.u1_na_mm", "U1-NA (distance)", "Steiner", "distance", "U1_tip N A", _point_to_line("U1_tip", "N", "A"),
       Norm(4, text="4 mm"), "U1 tip to N-A, + anterior"),
    _d("steiner.l1_nb_deg", "L1-NB (angle)", "Steiner", "angle", "L1_root L1_tip N B",
       _lines(("B", "N"), ("L1_root", "L1_tip")), Norm(25, text="25 deg"), "B->N vs L1 axis (root->tip)"),
    _d("steiner.l1_nb_mm", "L1-NB (distance)", "Steiner", "distance", "L1_tip N B", _point_to_line("L1_tip", "N", "B"),
       Norm(4, text="4 mm"), "L1 tip to N-B, + anterior"),
    _d("steiner.interincisal", "Interincisal angle", "Steiner", "angle", "U1_root U1_tip L1_root L1_tip",
       _lines(("U1_root", "U1_tip"), ("L1_root", "L1_tip")), Norm(131, 6, text="131 +- 6 deg"), "U1 axis vs L1 axis"),
    _d("steiner.u1_sn", "U1-SN", "Steiner", "angle", "U1_root U1_tip S N",
       _lines(("N", "S"), ("U1_root", "U1_tip")), Norm(103, 6, text="103 +- 6 deg"), "N->S vs U1 axis (root->tip)"),
    _d("downs.facial_angle", "Facial angle", "Downs", "angle", "N Pog Po Or", _lines(("Or", "Po"), ("N", "Pog")),
       Norm(87.8, 3.6, text="87.8 +- 3.6 deg"), "N-Pog vs FH (posterior-inferior angle)"),
    _d("downs.convexity", "Angle of convexity", "Downs", "angle", "N A Pog", _downs_convexity,
       Norm(0, 5, text="0 +- 5 deg"), "180 - angle N-A-Pog, + when A is ahead of N-Pog"),
    _d("downs.ab_plane", "A-B plane angle", "Downs", "angle", "A B N Pog", _ab_plane,
       Norm(-4.6, 3.8, text="-4.6 +- 3.8 deg"), "A-B vs N-Pog, - when B is behind A"),
    _d("downs.y_axis", "Y-axis", "Downs", "angle", "S Gn Po Or", _lines(("Po", "Or"), ("S", "Gn")),
       Norm(59, 4, text="59 +- 4 deg"), "S->Gn vs Po->Or"),
    _d("tweed.fma", "FMA", "Tweed", "angle", "Po Or Go Me", _lines(("Po", "Or"), ("Go", "Me")),
       Norm(25, 5, text="25 +- 5 deg"), "FH vs MP (Go-Me)"),
    _d("tweed.impa", "IMPA", "Tweed", "angle", "L1_root L1_tip Go Me", _lines(("Me", "Go"), ("L1_root", "L1_tip")),
       Norm(90, 5, text="90 +- 5 deg"), "L1 axis vs Me->Go"),
    _d("tweed.fmia", "FMIA", "Tweed", "angle", "Po Or Go Me L1_root L1_tip", _fmia,
       Norm(65, text="65 deg"), "180 - FMA - IMPA"),
    _d("mcnamara.a_nperp", "A to N-perp", "McNamara", "distance", "A N Po Or", _n_perp("A"),
       Norm(low=0, high=1, text="0 to +1 mm"), "A to the perpendicular to FH through N, + anterior"),
    _d("mcnamara.pog_nperp", "Pog to N-perp", "McNamara", "distance", "Pog N Po Or", _n_perp("Pog"),
       Norm(low=-4, high=2, text="-4 to +2 mm (adult)"), "Pog to the perpendicular to FH through N, + anterior"),
    _d("mcnamara.co_a", "Co-A", "McNamara", "distance", "Co A", _point_to_point("Co", "A"),
       Norm(text="size-dependent"), "midfacial length Co-A"),
    _d("mcnamara.co_gn", "Co-Gn", "McNamara", "distance", "Co Gn", _point_to_point("Co", "Gn"),
       Norm(text="size-dependent"), "mandibular length Co-Gn"),
    _d("mcnamara.co_difference", "Maxillomandibular difference", "McNamara", "distance", "Co A Gn", _co_difference,
       Norm(low=20, high=33, text="about 20-33 mm"), "Co-Gn - Co-A"),
    _d("mcnamara.lafh", "Lower face height", "McNamara", "distance", "ANS Me", _point_to_point("ANS", "Me"),
       Norm(text="size-dependent"), "ANS-Me"),
    _d("ricketts.facial_depth", "Facial depth", "Ricketts", "angle", "N Pog Po Or", _lines(("Or", "Po"), ("N", "Pog")),
       Norm(87, 3, text="87 +- 3 deg"), "N-Pog vs FH"),
    _d("ricketts.convexity", "Convexity (A to N-Pog)", "Ricketts", "distance", "A N Pog", _point_to_line("A", "N", "Pog"),
       Norm(2, 2, text="2 +- 2 mm"), "A to N-Pog, + anterior"),
    _d("ricketts.l1_apog", "L1 to A-Pog", "Ricketts", "distance", "L1_tip A Pog", _point_to_line("L1_tip", "A", "Pog"),
       Norm(1, 2, text="1 +- 2 mm"), "L1 tip to A-Pog, + anterior"),
    _d("ricketts.cranial_deflection", "Cranial deflection", "Ricketts", "angle", "Ba N Po Or",
       _lines(("Po", "Or"), ("Ba", "N")), Norm(27, 3, text="27 +- 3 deg"), "Ba->N vs Po->Or"),
    _d("ricketts.ll_eline", "Lower lip to E-line", "Ricketts", "distance", "LL Prn Pog_soft",
       _point_to_line("LL", "Prn", "Pog_soft"), Norm(-2, 2, text="-2 +- 2 mm"), "LL to Prn-Pog_soft, + ahead"),
    _d("bjork.saddle", "Saddle angle", "Bjork-Jarabak", "angle", "N S Ar", _angle_at("N", "S", "Ar"),
       Norm(123, 5, text="123 +- 5 deg"), "angle N-S-Ar"),
    _d("bjork.articular", "Articular angle", "Bjork-Jarabak", "angle", "S Ar Go", _angle_at("S", "Ar", "Go"),
       Norm(143, 6, text="143 +- 6 deg"), "angle S-Ar-Go"),
    _d("bjork.gonial", "Gonial angle", "Bjork-Jarabak", "angle", "Ar Go Me", _angle_at("Ar", "Go", "Me"),
       Norm(130, 7, text="130 +- 7 deg"), "angle Ar-Go-Me"),
    _d("bjork.sum", "Bjork sum", "Bjork-Jarabak", "angle", "N S Ar Go Me", _bjork_sum,
       Norm(396, 6, text="396 +- 6 deg"), "saddle + articular + gonial"),
    _d("bjork.jarabak_ratio", "Facial height ratio (Jarabak)", "Bjork-Jarabak", "ratio", "S Go N Me", _jarabak,
       Norm(low=62, high=65, text="62-65 %"), "S-Go / N-Me x 100"),
    _d("burstone.ul_snpog", "UL to Sn-Pog'", "Burstone", "distance", "UL Sn Pog_soft",
       _point_to_line("UL", "Sn", "Pog_soft"), Norm(3, 1, text="3 +- 1 mm"), "UL to Sn-Pog_soft, + anterior"),
    _d("burstone.ll_snpog", "LL to Sn-Pog'", "Burstone", "distance", "LL Sn Pog_soft",
       _point_to_line("LL", "Sn", "Pog_soft"), Norm(2, 1, text="2 +- 1 mm"), "LL to Sn-Pog_soft, + anterior"),
    _d("holdaway.h_angle", "H-angle", "Holdaway", "angle", "Pog_soft UL N B", _lines(("B", "N"), ("Pog_soft", "UL")),
       Norm(low=7, high=15, text="7-15 deg"), "H-line (Pog_soft->UL) vs B->N"),
    _d("holdaway.chin_thickness", "Soft-tissue chin thickness", "Holdaway", "distance", "Pog Pog_soft",
       _point_to_point("Pog", "Pog_soft"), Norm(low=10, high=12, text="10-12 mm"), "Pog to Pog_soft"),
    # Not a row of the table, but the spec classifies the vertical pattern from SN-MP (MP = Go-Me);
    # its norm is the normodivergent band of that classification.
    _d("vertical.sn_mp", "SN-MP", "Vertical pattern", "angle", "S N Go Me", _lines(("S", "N"), ("Go", "Me")),
       Norm(low=27, high=37, text="27-37 deg"), "S->N vs Go->Me"),
)

# Stated in the spec as not computable from the 25 landmarks: reported so nobody looks for them.
NOT_COMPUTABLE = (
    ("Wits appraisal", "needs the occlusal plane (no molar/occlusal landmarks)"),
    ("Occlusal-plane angles", "needs the occlusal plane (no molar/occlusal landmarks)"),
    ("Ricketts facial axis", "needs Pt and Ricketts' cranial base points, not in the 25"),
    ("Xi-based measures", "needs Xi point, not in the 25"),
    ("Nasolabial angle", "needs columella tangent points, not in the 25"),
)


# --- classifications -------------------------------------------------------------------------

def _skeletal_class(v: float) -> str:
    return "Class II" if v > 4 else ("Class III" if v < 0 else "Class I")


def _band(lo: float, hi: float) -> Callable[[float], str]:
    def f(v: float) -> str:
        return "hypodivergent" if v < lo else ("hyperdivergent" if v > hi else "normodivergent")
    return f


def _jarabak_pattern(v: float) -> str:
    # Jarabak: a small posterior/anterior height ratio means a clockwise (hyperdivergent) rotation.
    return "hyperdivergent" if v < 59 else ("hypodivergent" if v > 65 else "normodivergent")


CLASSIFIERS = (
    ("skeletal_class", "Skeletal class (ANB)", "steiner.anb", _skeletal_class,
     "Class I 0-4 deg, Class II > 4 deg, Class III < 0 deg"),
    ("vertical_fma", "Vertical pattern (FMA)", "tweed.fma", _band(20, 30),
     "hypodivergent < 20 deg, normodivergent 20-30 deg, hyperdivergent > 30 deg"),
    ("vertical_snmp", "Vertical pattern (SN-MP)", "vertical.sn_mp", _band(27, 37),
     "hypodivergent < 27 deg, normodivergent 27-37 deg, hyperdivergent > 37 deg"),
    ("vertical_jarabak", "Vertical pattern (Jarabak ratio)", "bjork.jarabak_ratio", _jarabak_pattern,
     "< 59 % clockwise (hyperdivergent), 59-65 % neutral, > 65 % counter-clockwise (hypodivergent)"),
)


# --- the analysis ----------------------------------------------------------------------------

def _landmark_flags(result: InferenceResult, names: tuple[str, ...]) -> tuple[list[MeasurementFlag], list[str]]:
    flags, missing = [], []
    for n in names:
        lm = result.landmark(n)
        if not lm.available:
            missing.append(n)
            flags.append(MeasurementFlag(Caveat.UNAVAILABLE, n))
            continue
        if lm.level == "low":
            flags.append(MeasurementFlag(Caveat.LOW_CONFIDENCE, n))
        if getattr(result, "qc", None) is not None and n in result.qc.doubtful_landmarks:
            flags.append(MeasurementFlag(Caveat.QC_DOUBTFUL, n))
        if not lm.predicted:
            flags.append(MeasurementFlag(Caveat.RULE_BASED, n))
    return flags, missing


def analyse(result: InferenceResult) -> Analysis:
    frame = choose_frame(result)
    points = {lm.name: frame.to_frame([lm.x, lm.y]) for lm in result.landmarks if lm.available}

    def p(name: str) -> np.ndarray:
        if name not in points:
            raise MissingLandmark(name)
        return points[name]

    out: list[Measurement] = []
    for d in DEFINITIONS:
        flags, missing = _landmark_flags(result, d.landmarks)
        unit = UNITS[d.kind]
        common = dict(key=d.key, name=d.name, analysis=d.analysis, kind=d.kind, unit=unit, norm=d.norm,
                      landmarks=d.landmarks, definition=d.definition)
        if missing:
            reason = "landmark unavailable: " + ", ".join(missing)
            out.append(Measurement(value=None, deviation_sd=None, flags=tuple(flags), omitted_reason=reason, **common))
            continue
        if d.kind == "distance" and not frame.spacing_known:
            flags.append(MeasurementFlag(Caveat.SPACING_UNKNOWN))
            out.append(Measurement(value=None, deviation_sd=None, flags=tuple(flags),
                                   omitted_reason="pixel spacing unknown: mm values cannot be measured", **common))
            continue
        if not frame.spacing_known:
            flags.append(MeasurementFlag(Caveat.SQUARE_PIXELS_ASSUMED))
        try:
            value, line = d.compute(p)
        except DegenerateGeometry as exc:
            flags.append(MeasurementFlag(Caveat.DEGENERATE))
            out.append(Measurement(value=None, deviation_sd=None, flags=tuple(flags),
                                   omitted_reason=f"degenerate geometry ({exc}) among {', '.join(d.landmarks)}",
                                   **common))
            continue
        dev = (value - d.norm.mean) / d.norm.sd if d.norm.sd is not None and d.norm.mean is not None else None
        poly = tuple((float(x), float(y)) for x, y in frame.to_pixels(np.array(line)))
        out.append(Measurement(value=float(value), deviation_sd=dev, flags=tuple(flags), polyline=poly, **common))

    by_key = {m.key: m for m in out}
    classes = []
    for key, name, basis, rule, bands in CLASSIFIERS:
        m = by_key[basis]
        if m.value is None:
            classes.append(Classification(key, name, basis, None, None, bands, f"{m.name} omitted: {m.omitted_reason}"))
        else:
            classes.append(Classification(key, name, basis, m.value, rule(m.value), bands))

    notes = [f"face direction from {frame.how}" + ("; image mirrored to face +x" if frame.mirrored else "")]
    if not frame.spacing_known:
        notes.append("pixel spacing unknown: angles and ratios assume square pixels; mm values omitted")
    notes += [f"not computable: {n} ({why})" for n, why in NOT_COMPUTABLE]
    return Analysis(measurements=out, classifications=classes, spacing_known=frame.spacing_known,
                    frame=frame.how, notes=notes)
