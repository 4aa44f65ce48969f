"""Landmark vocabulary of the CephTrace v4 contract (shared/spec/cephtrace-v4.md).

Every array of landmarks in cephnode is indexed in CANONICAL_25 order.
"""
from __future__ import annotations

CANONICAL_25: tuple[str, ...] = (
    "S", "N", "Or", "Po", "ANS", "PNS", "A", "B", "Pog", "Gn",
    "Me", "Go", "Ar", "Co", "U1_tip", "U1_root", "L1_tip", "L1_root",
    "UL", "LL", "Pm", "Ba", "Pog_soft", "Sn", "Prn",
)
INDEX: dict[str, int] = {name: i for i, name in enumerate(CANONICAL_25)}

FULL_NAMES: dict[str, str] = {
    "S": "Sella", "N": "Nasion", "Or": "Orbitale", "Po": "Porion",
    "ANS": "Anterior nasal spine", "PNS": "Posterior nasal spine",
    "A": "Subspinale (A point)", "B": "Supramentale (B point)", "Pog": "Pogonion",
    "Gn": "Gnathion", "Me": "Menton", "Go": "Gonion", "Ar": "Articulare",
    "Co": "Condylion", "U1_tip": "Upper incisor tip", "U1_root": "Upper incisor apex",
    "L1_tip": "Lower incisor tip", "L1_root": "Lower incisor apex",
    "UL": "Upper lip (labrale superius)", "LL": "Lower lip (labrale inferius)",
    "Pm": "Pm (unvalidated: soft-tissue chin-lip inflection in the published code)",
    "Ba": "Basion", "Pog_soft": "Soft-tissue pogonion", "Sn": "Subnasale",
    "Prn": "Pronasale (nose tip)",
}

# Phase 0D output / Phase 0E input.
ANCHOR_ORDER: tuple[str, ...] = ("S", "N", "Me", "ANS", "Go", "Pog", "Prn")
# Phase 0E output.
DERIVED_ORDER: tuple[str, ...] = (
    "Or", "Po", "PNS", "A", "B", "Gn", "Ar", "Co", "U1_tip", "U1_root",
    "L1_tip", "L1_root", "UL", "LL", "Pm", "Ba", "Pog_soft", "Sn",
)
# Points Phase 0B reads off the soft-tissue profile; they overwrite the MLP's.
PROFILE_POINTS: tuple[str, ...] = ("Prn", "Sn", "UL", "LL", "Pog_soft", "Pm")

# Gaussian sigma (pixels on the 256 grid) of each attention channel, Phase 0E.
PRIOR_SIGMA_256: dict[str, float] = {
    "Prn": 5,
    "S": 6, "N": 6,
    "Me": 7, "ANS": 7,
    "UL": 8, "LL": 8, "Sn": 8,
    "Pog": 10, "Gn": 10, "Pog_soft": 10,
    "Go": 12, "Or": 12, "A": 12, "Pm": 12, "U1_tip": 12, "L1_tip": 12,
    "Ar": 13,
    "Co": 18, "U1_root": 18, "L1_root": 18,
    "Po": 20, "B": 20,
    "PNS": 22, "Ba": 22,
}

# The 19 landmarks the ISBI 2015 data set labels (shared/data/isbi2015).
ISBI_19: tuple[str, ...] = (
    "S", "N", "Or", "Po", "A", "B", "Pog", "Me", "Gn", "Go", "L1_tip",
    "U1_tip", "UL", "LL", "Sn", "Pog_soft", "PNS", "ANS", "Ar",
)
# No real labels anywhere we can train from; Prn is only measurable geometrically.
UNLABELLED: tuple[str, ...] = ("Co", "Ba", "U1_root", "L1_root", "Pm")

CONFIDENCE_HIGH = 0.5
CONFIDENCE_MEDIUM = 0.2


def confidence_level(peak: float) -> str:
    """Map a heatmap peak to the contract's high / medium / low bands."""
    if peak > CONFIDENCE_HIGH:
        return "high"
    if peak > CONFIDENCE_MEDIUM:
        return "medium"
    return "low"


assert len(CANONICAL_25) == 25 and len(set(CANONICAL_25)) == 25
assert set(ANCHOR_ORDER) | set(DERIVED_ORDER) == set(CANONICAL_25)
assert set(PRIOR_SIGMA_256) == set(CANONICAL_25)
