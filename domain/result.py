"""Typed results of the inference pipeline. Plain dataclasses that serialise to JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


@dataclass
class Landmark:
    name: str
    # Pixel coordinates in the ORIGINAL image (column x, row y); None when unavailable.
    x: float | None
    y: float | None
    confidence: float          # Stage 1 heatmap peak, 0..1 (0 when unavailable)
    level: str                 # "high" | "medium" | "low" | "unavailable"
    predicted: bool            # False: the pack does not really predict this landmark
    note: str = ""             # why it is not a validated prediction, if it is not

    @property
    def available(self) -> bool:
        return self.x is not None and self.y is not None


@dataclass
class Stage0Diagnostics:
    ok: bool
    failed_phase: str | None = None     # "0A", "0B", "0C", "0D" or "0E"
    reason: str | None = None
    profile_pixels: int = 0
    # Anchors found by 0B/0D, in original-image pixels (None when not found).
    anchors: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    # Zone boxes at 512 in the canonical pose (x1, y1, x2, y2).
    zone_boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # Traced contours, original-image pixels, per class: list of (x, y).
    contours: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    profile: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Orientation:
    """How the input was turned into the canonical pose (face to the image's left)."""
    rotation_k: int        # number of 90-degree counter-clockwise turns applied first (np.rot90)
    flipped: bool          # then mirrored left-right
    source: str            # "dicom", "image", "given" or "none"
    inverted: bool = False  # intensities were inverted (a negative image without MONOCHROME1)
    # Detector score margin between the first and second (pose, polarity) hypotheses; None
    # when the pose was not detected from the image.
    margin: float | None = None
    # "" (not needed), "confirmed" (other poses traced less credibly) or "overturned" (another
    # pose than the first choice traced more credibly); see inference.pipeline.Pipeline.run.
    verification: str = ""
    hypotheses_tried: int = 1


class Verdict(StrEnum):
    """What may be done with a tracing (docs/quality.md)."""
    PASS = "pass"        # delivered as it is
    REVIEW = "review"    # delivered, doubtful landmarks and the measurements using them flagged
    FAIL = "fail"        # withheld: the objects say so and carry no values; needs manual tracing


@dataclass
class QualityVerdict:
    """The quality gate's judgement of one tracing (inference.quality.judge makes it)."""
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)     # why not pass (and notes), plain words
    doubtful_landmarks: list[str] = field(default_factory=list)
    # The calibrated signals behind it, for logs, benchmarks and the JSON output.
    signals: dict[str, float | str | bool | None] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)       # reason kinds (dicom_io.codes.QC_REASONS keys)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": list(self.reasons),
                "doubtful_landmarks": list(self.doubtful_landmarks), "signals": dict(self.signals),
                "codes": list(self.codes)}

    @classmethod
    def from_dict(cls, d: dict) -> "QualityVerdict":
        return cls(Verdict(d["verdict"]), list(d.get("reasons", [])), list(d.get("doubtful_landmarks", [])),
                   dict(d.get("signals", {})), list(d.get("codes", [])))


@dataclass
class InferenceResult:
    image_name: str
    width: int
    height: int
    landmarks: list[Landmark]
    stage0: Stage0Diagnostics
    orientation: Orientation
    degraded: bool
    timings_ms: dict[str, float]
    providers: dict[str, list[str]]
    pack_name: str
    pack_version: str
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column)
    # The quality gate's verdict (inference.quality.judge); None on results made before it.
    qc: QualityVerdict | None = None

    def landmark(self, name: str) -> Landmark:
        for lm in self.landmarks:
            if lm.name == name:
                return lm
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.qc is not None:
            d["qc"] = self.qc.to_dict()
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InferenceResult":
        d = dict(d)
        d["landmarks"] = [Landmark(**lm) for lm in d["landmarks"]]
        s0 = dict(d["stage0"])
        s0["anchors"] = {k: (tuple(v) if v is not None else None) for k, v in s0.get("anchors", {}).items()}
        s0["zone_boxes"] = {k: tuple(v) for k, v in s0.get("zone_boxes", {}).items()}
        s0["contours"] = {k: [tuple(p) for p in v] for k, v in s0.get("contours", {}).items()}
        s0["profile"] = [tuple(p) for p in s0.get("profile", [])]
        d["stage0"] = Stage0Diagnostics(**s0)
        d["orientation"] = Orientation(**d["orientation"])
        if d.get("qc") is not None:
            d["qc"] = QualityVerdict.from_dict(d["qc"])
        if d.get("pixel_spacing_mm") is not None:
            d["pixel_spacing_mm"] = tuple(d["pixel_spacing_mm"])
        return cls(**d)
