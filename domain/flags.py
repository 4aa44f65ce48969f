"""Why a measurement deserves a second look, or was not computed: typed caveats.

cephalometry.analysis attaches them to each measurement; the SR codes them (dicom_io.codes
.caveat_code), the GSPS and the tracing sheet mark what they touch. Written in text as
"kind" or "kind:landmark" (e.g. "low-confidence:Pog"), which is also how they read in JSON.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Caveat(StrEnum):
    UNAVAILABLE = "unavailable"                      # a landmark it needs is not available
    LOW_CONFIDENCE = "low-confidence"                # a landmark it uses was found with low confidence
    QC_DOUBTFUL = "qc-doubtful"                      # the quality gate doubts a landmark it uses
    RULE_BASED = "rule-based"                        # a landmark it uses is placed by a rule, not predicted
    SPACING_UNKNOWN = "spacing-unknown"              # a distance, and the pixel spacing is unknown
    SQUARE_PIXELS_ASSUMED = "square-pixels-assumed"  # an angle or ratio measured without spacing
    DEGENERATE = "degenerate"                        # its landmarks coincide: the geometry is undefined

    @property
    def about_a_landmark(self) -> bool:
        return self in (Caveat.UNAVAILABLE, Caveat.LOW_CONFIDENCE, Caveat.QC_DOUBTFUL, Caveat.RULE_BASED)

    @property
    def doubtful(self) -> bool:
        """A value was computed, but the reader should check the landmark it names."""
        return self in (Caveat.LOW_CONFIDENCE, Caveat.QC_DOUBTFUL, Caveat.RULE_BASED)


@dataclass(frozen=True)
class MeasurementFlag:
    caveat: Caveat
    landmark: str | None = None      # the landmark it is about, for the landmark caveats

    def __post_init__(self) -> None:
        if self.caveat.about_a_landmark != (self.landmark is not None):
            raise ValueError(f"{self.caveat} {'needs' if self.caveat.about_a_landmark else 'takes no'} landmark")

    def __str__(self) -> str:
        return f"{self.caveat}:{self.landmark}" if self.landmark else str(self.caveat)

    @classmethod
    def parse(cls, text: str) -> "MeasurementFlag":
        kind, _, landmark = text.partition(":")
        return cls(Caveat(kind), landmark or None)
