"""The kinds of DICOM object cephnode returns for a traced image: the one list of them.

The value of each kind is the name admins write in the configuration (`kinds = ["sr", "seg"]`),
the prefix of its file in the outbox and the key of its builder in dicom_io.outputs. Adding a
kind starts here: a member below, then its builder in dicom_io.outputs.BUILDERS (a test checks
that every kind has one).
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class OutputKind(StrEnum):
    """A kind of result object, in the order objects are built and delivered."""
    SR = "sr"        # Comprehensive SR, TID 1500: landmarks and measurements
    SEG = "seg"      # binary segmentation of the traced contours
    GSPS = "gsps"    # grayscale softcopy presentation state drawing the tracing
    SC = "sc"        # secondary-capture tracing sheet


ALL_OUTPUT_KINDS: tuple[OutputKind, ...] = tuple(OutputKind)
# The SOP class each kind is stored as (tests/test_report_objects.py checks the builders agree).
# Delivery proposes all of a destination's classes on every association, so that a peer which
# refuses one says so even when that object is the only one waiting (the SR goes out alone).
SOP_CLASSES: dict[OutputKind, str] = {
    OutputKind.SR: "1.2.840.10008.5.1.4.1.1.88.33",     # Comprehensive SR
    OutputKind.SEG: "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation
    OutputKind.GSPS: "1.2.840.10008.5.1.4.1.1.11.1",    # Grayscale Softcopy Presentation State
    OutputKind.SC: "1.2.840.10008.5.1.4.1.1.7",         # Secondary Capture Image
}
# What a destination receives when its configuration names no kinds: all of them (the tracing
# sheet is what every viewer shows, even one that draws neither SR nor GSPS).
DEFAULT_OUTPUT_KINDS: tuple[OutputKind, ...] = ALL_OUTPUT_KINDS


def parse_kinds(kinds: str | Iterable[str]) -> tuple[OutputKind, ...]:
    """'sr,seg' or ['sr', 'seg'] -> (SR, SEG) in build order; an unknown kind is a ValueError."""
    items = kinds.split(",") if isinstance(kinds, str) else [str(k) for k in kinds]
    wanted = {k.strip().lower() for k in items if k.strip()}
    unknown = wanted - {k.value for k in OutputKind}
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; choose from {', '.join(OutputKind)}")
    return tuple(k for k in OutputKind if k.value in wanted)
