"""Coded concepts used in the objects cephnode writes.

DICOM has no cephalometric template and no standard codes for most landmarks and
measurements, so we use a private coding scheme whose designator starts with "99" (declared in
every object's Coding Scheme Identification Sequence), and standard codes where they exist:
SCT sella turcica, FMA nasion, DCM/SCT generic concepts, UCUM units. Code values are an explicit
table, not derived from Python names, because archived reports refer to them forever.
"""
from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cephnode.domain.flags import Caveat, MeasurementFlag
from cephnode.domain.landmarks import CANONICAL_25, FULL_NAMES

SCHEME = "99CEPHNODE"
SCHEME_NAME = "cephnode private cephalometric codes"
SCHEME_VERSION = "1"
SCHEME_RESPONSIBLE = "cephnode project"


def private(value: str, meaning: str) -> Code:
    if len(value) > 16:
        raise ValueError(f"code value {value!r} is longer than SH allows")
    if len(meaning) > 64:
        raise ValueError(f"code meaning {meaning!r} is longer than LO allows")
    return Code(value, SCHEME, meaning, SCHEME_VERSION)


# cornerstone's private scheme (@cornerstonejs/adapters, Cornerstone3D constants): OHIF reads a
# label's place on the image from an SCOORD of this name in a measurement group (dicom_io.sr_labels).
CS3D_SCHEME = "99CS3D"
TEXT_POSITION = Code("TextPosition", CS3D_SCHEME, "Text Annotation Position")


def coding_scheme_identification(*, cornerstone: bool = False) -> list[CodingSchemeIdentificationItem]:
    """Items of the Coding Scheme Identification Sequence (0008,0110) declaring the private schemes
    an object uses: ours, and cornerstone's when `cornerstone` (the SR's label positions)."""
    items = [CodingSchemeIdentificationItem(
        designator=SCHEME, name=SCHEME_NAME, version=SCHEME_VERSION, responsible_organization=SCHEME_RESPONSIBLE,
    )]
    if cornerstone:
        items.append(CodingSchemeIdentificationItem(
            designator=CS3D_SCHEME, name="Cornerstone3D annotation codes", responsible_organization="cornerstonejs",
        ))
    return items


# --- units (UCUM) --------------------------------------------------------------------------
UNITS: dict[str, Code] = {
    "deg": Code("deg", "UCUM", "degree"),
    "mm": Code("mm", "UCUM", "millimeter"),
    "%": Code("%", "UCUM", "percent"),
    "1": Code("1", "UCUM", "no units"),
}

# --- landmarks -----------------------------------------------------------------------------
_STANDARD_LANDMARKS = {
    "S": Code("42575006", "SCT", "Sella turcica"),
    "N": Code("264779", "FMA", "Nasion"),
}
# Code meanings are at most 64 characters (LO).
_SHORT_MEANINGS = {"Pm": "Pm (unvalidated; chin-lip inflection in published code)"}
LANDMARKS: dict[str, Code] = {
    n: _STANDARD_LANDMARKS.get(n)
    or private("LM-" + n.upper().replace("_", "-"), _SHORT_MEANINGS.get(n, FULL_NAMES[n]))
    for n in CANONICAL_25
}
LANDMARK_BY_CODE: dict[tuple[str, str], str] = {(c.scheme_designator, c.value): n for n, c in LANDMARKS.items()}

# Short meaning on purpose: OHIF writes it under every landmark ("S:" / "Detection confidence: 0.87 1").
LANDMARK_CONFIDENCE = private("LM-CONFIDENCE", "Detection confidence")
LANDMARK_CONFIDENCE_LEVEL = private("LM-CONF-LEVEL", "Landmark confidence level")
CONFIDENCE_LEVELS: dict[str, Code] = {
    "high": private("CONF-HIGH", "High confidence (heatmap peak > 0.5)"),
    "medium": private("CONF-MEDIUM", "Medium confidence (heatmap peak > 0.2)"),
    "low": private("CONF-LOW", "Low confidence (heatmap peak <= 0.2)"),
    "unavailable": private("CONF-NONE", "Not available"),
}
LANDMARK_SOURCE = private("LM-SOURCE", "Landmark source")
LANDMARK_SOURCES: dict[str, Code] = {
    "model": private("SRC-MODEL", "Predicted by the model pack"),
    "rule": private("SRC-RULE", "Placed by a stated rule, not a validated prediction"),
    "unavailable": private("SRC-UNAVAILABLE", "Not available from this model pack"),
}

# --- measurements ---------------------------------------------------------------------------
# TID 1500 "Procedure reported" is drawn from CID 100, which has no cephalometric procedure.
PROCEDURE = codes.SCT.ImagingProcedure
ANALYSES: dict[str, Code] = {
    "Steiner": private("AN-STEINER", "Steiner analysis"),
    "Downs": private("AN-DOWNS", "Downs analysis"),
    "Tweed": private("AN-TWEED", "Tweed analysis"),
    "McNamara": private("AN-MCNAMARA", "McNamara analysis"),
    "Ricketts": private("AN-RICKETTS", "Ricketts analysis"),
    "Bjork-Jarabak": private("AN-BJORK", "Bjork-Jarabak analysis"),
    "Burstone": private("AN-BURSTONE", "Burstone analysis"),
    "Holdaway": private("AN-HOLDAWAY", "Holdaway analysis"),
    "Vertical pattern": private("AN-VERTICAL", "Vertical growth pattern"),
}
# Measurement key -> code value. The meaning is the measurement's display name (OHIF labels the
# drawing with it), filled in by measurement_code().
_MEASUREMENT_VALUES = {
    "steiner.sna": "M-SNA", "steiner.snb": "M-SNB", "steiner.anb": "M-ANB",
    "steiner.sn_gogn": "M-SN-GOGN", "steiner.u1_na_deg": "M-U1-NA-DEG", "steiner.u1_na_mm": "M-U1-NA-MM",
    "steiner.l1_nb_deg": "M-L1-NB-DEG", "steiner.l1_nb_mm": "M-L1-NB-MM", "steiner.interincisal": "M-INTERINCISAL",
    "steiner.u1_sn": "M-U1-SN", "downs.facial_angle": "M-FACIAL-ANGLE", "downs.convexity": "M-CONVEXITY-DEG",
    "downs.ab_plane": "M-AB-PLANE", "downs.y_axis": "M-Y-AXIS", "tweed.fma": "M-FMA", "tweed.impa": "M-IMPA",
    "tweed.fmia": "M-FMIA", "mcnamara.a_nperp": "M-A-NPERP", "mcnamara.pog_nperp": "M-POG-NPERP",
    "mcnamara.co_a": "M-CO-A", "mcnamara.co_gn": "M-CO-GN", "mcnamara.co_difference": "M-CO-DIFF",
    "mcnamara.lafh": "M-LAFH", "ricketts.facial_depth": "M-FACIAL-DEPTH", "ricketts.convexity": "M-CONVEXITY-MM",
    "ricketts.l1_apog": "M-L1-APOG", "ricketts.cranial_deflection": "M-CRANIAL-DEFL",
    "ricketts.ll_eline": "M-LL-ELINE", "bjork.saddle": "M-SADDLE", "bjork.articular": "M-ARTICULAR",
    "bjork.gonial": "M-GONIAL", "bjork.sum": "M-BJORK-SUM", "bjork.jarabak_ratio": "M-JARABAK",
    "burstone.ul_snpog": "M-UL-SNPOG", "burstone.ll_snpog": "M-LL-SNPOG", "holdaway.h_angle": "M-H-ANGLE",
    "holdaway.chin_thickness": "M-CHIN-THICK", "vertical.sn_mp": "M-SN-MP",
}
MEASUREMENT_KEY_BY_VALUE = {v: k for k, v in _MEASUREMENT_VALUES.items()}


def measurement_code(key: str, name: str) -> Code:
    return private(_MEASUREMENT_VALUES[key], name)


# Where a value lies against its norm (CID 222 values).
NORMALITY_CONCEPT = codes.DCM.Normality
NORMALITY: dict[str, Code] = {
    "within": codes.SCT.Normal,
    "above": codes.SCT.AbnormallyHigh,
    "below": codes.SCT.AbnormallyLow,
}

NOT_COMPUTED_LANDMARK = private("NC-LANDMARK", "Not computed: a landmark it needs is unavailable")
NOT_COMPUTED_SPACING = private("NC-SPACING", "Not computed: pixel spacing unknown, mm cannot be measured")
NOT_COMPUTED_DEGENERATE = private("NC-DEGENERATE", "Not computed: landmarks coincide, no line or angle")
CAVEAT = private("CAVEAT", "Measurement caveat")


def caveat_code(flag: MeasurementFlag) -> Code:
    """A caveat of a measurement (cephalometry.analysis) as a code."""
    lm = flag.landmark
    tag = lm.upper().replace("_", "-") if lm else ""
    if flag.caveat is Caveat.LOW_CONFIDENCE:
        return private(f"LOWCONF-{tag}", f"Low-confidence landmark used: {lm}")
    if flag.caveat is Caveat.RULE_BASED:
        return private(f"RULE-{tag}", f"Rule-placed landmark used: {lm}")
    if flag.caveat is Caveat.UNAVAILABLE:
        return private(f"UNAVAIL-{tag}", f"Landmark unavailable: {lm}")
    if flag.caveat is Caveat.QC_DOUBTFUL:
        return private(f"QCDOUBT-{tag}", f"Landmark doubtful by quality control: {lm}")
    if flag.caveat is Caveat.SPACING_UNKNOWN:
        return private("SPACING-UNKNOWN", "Pixel spacing unknown")
    if flag.caveat is Caveat.DEGENERATE:
        return private("DEGENERATE", "Landmarks coincide: geometry undefined")
    if flag.caveat is Caveat.SQUARE_PIXELS_ASSUMED:
        return private("SQUARE-PX", "Square pixels assumed (pixel spacing unknown)")
    raise ValueError(f"no code for flag {flag}")


# --- classifications ------------------------------------------------------------------------
CLASSIFICATION = private("CEPH-CLASSIFY", "Cephalometric classification")
CLASSIFICATIONS: dict[str, Code] = {
    "skeletal_class": private("CL-SKELETAL", "Skeletal class (ANB)"),
    "vertical_fma": private("CL-VERT-FMA", "Vertical pattern (FMA)"),
    "vertical_snmp": private("CL-VERT-SNMP", "Vertical pattern (SN-MP)"),
    "vertical_jarabak": private("CL-VERT-JARABAK", "Vertical pattern (Jarabak ratio)"),
}
CATEGORIES: dict[str, Code] = {
    "Class I": private("CL-CLASS-I", "Skeletal Class I"),
    "Class II": private("CL-CLASS-II", "Skeletal Class II"),
    "Class III": private("CL-CLASS-III", "Skeletal Class III"),
    "hypodivergent": private("CL-HYPODIV", "Hypodivergent"),
    "normodivergent": private("CL-NORMODIV", "Normodivergent"),
    "hyperdivergent": private("CL-HYPERDIV", "Hyperdivergent"),
    None: private("CL-UNDETERMINED", "Not determined"),
}

# --- how the tracing was made --------------------------------------------------------------
TRACING_PROCESS = private("CEPH-PROCESS", "Cephalometric tracing process")
TRACING_STATUS = private("TRACE-STATUS", "Tracing status")
TRACING_STATUSES: dict[bool, Code] = {
    False: private("TRACE-FULL", "Full two-stage tracing (anatomical priors used)"),
    True: private("TRACE-DEGRADED", "Degraded: Stage 0 priors failed, heatmaps alone"),
}

# --- report-level containers and labels ------------------------------------------------------
# TID 1500's container for evaluations that belong to no image region (row "Qualitative
# Evaluations"): where the report puts what has no geometry, outside Imaging Measurements.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# A text comment in a measurement group; OHIF writes and reads the same concept as an annotation's label.
COMMENT = Code("121106", "DCM", "Comment")

# --- quality control (inference.quality, dicom_io.qc_content) ------------------------------
QC_VERDICT = private("QC-VERDICT", "Quality control verdict")
QC_VERDICTS: dict[str, Code] = {
    "pass": private("QC-PASS", "Passed: tracing credible"),
    "review": private("QC-REVIEW", "Review: deliver with doubtful landmarks flagged"),
    "fail": private("QC-FAIL", "Failed: tracing withheld, needs manual tracing"),
}
QC_REASON = private("QC-REASON", "Quality control finding")
QC_REASONS: dict[str, Code] = {
    "nothing": private("QC-R-NOTHING", "No landmark was predicted"),
    "confidence": private("QC-R-CONF", "Landmark confidences low or collapsed"),
    "anatomy": private("QC-R-ANATOMY", "Anatomy outside population range"),
    "landmarks": private("QC-R-LANDMARKS", "Doubtful landmarks"),
    "pose": private("QC-R-POSE", "Patient Orientation disagrees with the anatomy"),
}
QC_DOUBTFUL = private("QC-DOUBTFUL", "Doubtful landmark")

# --- traced structures (SEG segments, GSPS/SC drawings) --------------------------------------
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
STRUCTURES: dict[str, Code] = {
    "soft_tissue_profile": private("ST-PROFILE", "Soft-tissue profile"),
    "cranial_base": private("ST-CRANIAL-BASE", "Anterior cranial base contour"),
    "palatal_plane": private("ST-PALATAL", "Palatal plane contour"),
    "mandibular_border": codes.SCT.Mandible,
    "mandibular_symphysis": private("ST-SYMPHYSIS", "Mandibular symphysis contour"),
    "upper_incisor_axis": codes.SCT.StructureOfMaxillaryIncisorTooth,
    "lower_incisor_axis": codes.SCT.StructureOfMandibularIncisorTooth,
}
