"""The landmarks and the cephalometric analysis as a Comprehensive SR (TID 1500), with highdicom.

Layout (shared/spec/dicom-output.md, docs/report.md). The Imaging Measurements container holds
only groups that have geometry, one TID 1501 group each:
- per available landmark: the detection confidence (NUM, TID 300) INFERRED FROM an SCOORD POINT
  on the source image, the landmark as the group's Finding, its own tracking identifier + UID,
  its confidence level and source (model / stated rule) as coded evaluations, a Comment
  naming it ("S") and where a tracking viewer writes that name;
- per computed measurement: a TID 300 NUM with ONE INFERRED FROM SCOORD POLYLINE along the lines
  it was measured on and the analysis as its method, the measurement itself as the Finding;
  normality and caveats as coded evaluations; where a tracking viewer writes its value.
Everything without geometry (unavailable landmarks, measurements left out and why, the
classifications, the tracing status, and further report-level verdicts) is a CODE item of
TID 1500's report-level Qualitative Evaluations container.

Why this shape (OHIF 3.13's TID 1500 loader, extensions/cornerstone-dicom-sr): it turns every
group of Imaging Measurements into one drawing and reads the first coordinate of each, so a
group without an SCOORD stops the whole SR; it labels a drawing with the group's Comment items
first, then "meaning: value unit" of each NUM. A planar-ROI group (TID 1410) would be labelled
by its NUM only, never by the landmark, hence the TID 1501 form with the point under the NUM.

Tracking (OHIF's "continue tracking measurements?", then its measurement panel): OHIF offers it
for an SR whose groups @cornerstonejs/adapters can read back as cornerstone tools, found by the
Tracking Identifier ("Cornerstone3DTools@^0.1.0:Length", prefix match; free text in TID 4108,
so the rest stays ours: "...:Length:Steiner U1-NA (distance)"). Landmarks are ArrowAnnotate
(labelled by the Comment); measurements are Angle, CobbAngle or Length when their drawing has
that tool's shape and the tool, which measures the drawing again, shows the SR's value
(dicom_io.sr_layout); the rest keep a plain identifier and are not tracked. Each tool's label
goes where the group's (TextPosition, 99CS3D) POINT says (dicom_io.sr_labels).

SCOORD convention: DICOM puts (0, 0) at the top-left CORNER of the first pixel, landmarks are
in pixel-centre coordinates, so every coordinate is written as (x + 0.5, y + 0.5).

This module decides what the report says and in which order; the content items themselves are
made by `CONTENT` (dicom_io.sr_content: plain pydicom datasets, fast), whose twin
dicom_io.sr_templates makes the very same items with highdicom's template classes (the
reference the tests compare every report with).
"""
from __future__ import annotations

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    DeviceObserverIdentifyingAttributes,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from cephnode.cephalometry.analysis import Analysis
from cephnode.cephalometry.analysis import Measurement as CephMeasurement
from cephnode.dicom_io import codes, qc_content, sr_content
from cephnode.dicom_io.equipment import MANUFACTURER
from cephnode.dicom_io.sr_fast import ComprehensiveSR, SharedConcept   # highdicom's, faster (see there)
from cephnode.dicom_io.sr_labels import label_positions
from cephnode.dicom_io.sr_layout import Drawing, measurement_drawings
from cephnode.dicom_io.uids import derived_uid
from cephnode.domain.flags import Caveat
from cephnode.domain.result import InferenceResult, Landmark

PIXEL_CORNER_OFFSET = 0.5

# Who makes the content items: sr_content writes them as plain pydicom datasets (fast);
# sr_templates makes the very same items with highdicom's classes, the reference the tests build
# every report against (tests/test_report_sr_fast.py).
CONTENT = sr_content

# How OHIF's SR reader (@cornerstonejs/adapters, Cornerstone3D MeasurementReport) recognises a
# group it can turn back into one of its measurement tools: a Tracking Identifier that starts
# with this tag, a colon and the tool's name. The rest of the identifier is ours.
CORNERSTONE_3D_TAG = "Cornerstone3DTools@^0.1.0"
ARROW_ANNOTATE = "ArrowAnnotate"
LO_MAX = 64     # the LO length: viewers (and our tests) expect a short identifier


def tracking_identifier(tool: str | None, name: str, short_name: str | None = None) -> str:
    """The group's Tracking Identifier: `name`, led by OHIF's tag and tool when a tool fits
    (`short_name` instead of `name` when that would be too long)."""
    if tool is None:
        return name
    found = f"{CORNERSTONE_3D_TAG}:{tool}:{name}"
    if len(found) > LO_MAX and short_name is not None:
        found = f"{CORNERSTONE_3D_TAG}:{tool}:{short_name}"
    return found[:LO_MAX]


class _Parts:
    """Content that many items of one report repeat, built once per report and shared.

    The report's groups repeat the same few dozen codes and the same source-image reference
    hundreds of times: each is made once (a CodedConcept by highdicom, the IMAGE item by
    highdicom) and put in every item that names it, as highdicom itself shares the algorithm
    identification between groups. The values written are the same. Per report, never
    module-wide: nothing is shared between two SRs.
    """

    def __init__(self, source: Dataset) -> None:
        self._concepts: dict[tuple, CodedConcept] = {}
        self.source_image = SourceImageForRegion.from_source_image(source)
        self.shared: dict = {}          # further items sr_content shares within the report

    def concept(self, code) -> CodedConcept:
        # Keyed on every field: pydicom's Code compares value and scheme only, not the meaning.
        key = (code.value, code.scheme_designator, code.meaning, code.scheme_version)
        found = self._concepts.get(key)
        if found is None:
            found = self._concepts[key] = SharedConcept.from_code(code)
        return found

    def evaluation(self, name, value) -> QualitativeEvaluation:
        return QualitativeEvaluation(self.concept(name), self.concept(value))


def scoord(points) -> np.ndarray:
    return np.asarray(points, dtype=float).reshape(-1, 2) + PIXEL_CORNER_OFFSET


def algorithm(pack_name: str, pack_version: str) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=f"cephnode CephTrace v4 ({pack_name})", version=pack_version)


_PROJECTION_MODALITIES = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}


def _library_view(source: Dataset) -> Dataset:
    """The source's header as the Image Library should see it.

    highdicom describes a projection radiograph by its Patient Orientation and Imager Pixel
    Spacing (TID 1603) and fails when either is missing, which happens with real CR/DX headers.
    Then we hide the modality from that one step so the entry carries only the generic
    descriptors (SOP class, modality code from the SOP class, rows, columns) instead of failing.
    """
    view = Dataset()
    for elem in source:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            view.add(elem)
    po = [str(v) for v in (source.get("PatientOrientation") or [])]
    complete = len(po) == 2 and all(po) and len(source.get("ImagerPixelSpacing") or []) == 2
    if str(source.get("Modality", "")) in _PROJECTION_MODALITIES and not complete:
        view.Modality = "OT"
    return view


def _landmark_source(lm: Landmark) -> str:
    if not lm.available:
        return "unavailable"
    return "model" if lm.predicted else "rule"


def landmark_label(lm: Landmark) -> str:
    """What a viewer writes next to the point: the abbreviation orthodontists use."""
    return lm.name


def _landmark_group(lm: Landmark, parts: _Parts, track_uid: str, algo, label_at=None):
    """TID 1501: the detection confidence INFERRED FROM the landmark's POINT, the landmark as the
    Finding, its confidence level and source as evaluations, a Comment naming it and where a
    tracking viewer writes that name."""
    extra = [CONTENT.comment(parts, landmark_label(lm))]
    if label_at is not None:
        extra.append(CONTENT.text_position(parts, label_at))
    return CONTENT.group(
        parts, track_uid=track_uid, identifier=tracking_identifier(ARROW_ANNOTATE, f"Landmark {lm.name}"),
        finding=parts.concept(codes.LANDMARKS[lm.name]), algo=algo,
        name=parts.concept(codes.LANDMARK_CONFIDENCE), value=float(lm.confidence), unit=parts.concept(codes.UNITS["1"]),
        method=None, graphic_type="POINT", graphic_data=scoord([(lm.x, lm.y)]),
        evaluations=[
            (parts.concept(codes.LANDMARK_CONFIDENCE_LEVEL), parts.concept(codes.CONFIDENCE_LEVELS[lm.level])),
            (parts.concept(codes.LANDMARK_SOURCE), parts.concept(codes.LANDMARK_SOURCES[_landmark_source(lm)])),
        ],
        extra=extra,
    )


def _evaluation_item(name, value, parts: _Parts, *, modifiers=()):
    """A CODE item of the report-level Qualitative Evaluations; `modifiers` (name, value) pairs
    qualify it (HAS CONCEPT MOD), e.g. the caveats of a measurement that was left out."""
    return CONTENT.code_item(parts, parts.concept(name), parts.concept(value),
                             modifiers=[(parts.concept(n), parts.concept(v)) for n, v in modifiers])


def _unavailable_landmarks(result: InferenceResult, parts: _Parts) -> list:
    return [_evaluation_item(codes.LANDMARKS[lm.name], codes.LANDMARK_SOURCES["unavailable"], parts)
            for lm in result.landmarks if not lm.available]


def _not_computed_status(m: CephMeasurement):
    caveats = {f.caveat for f in m.flags}
    if Caveat.UNAVAILABLE in caveats:
        return codes.NOT_COMPUTED_LANDMARK
    if Caveat.SPACING_UNKNOWN in caveats:
        return codes.NOT_COMPUTED_SPACING
    return codes.NOT_COMPUTED_DEGENERATE


def _omitted_measurements(analysis: Analysis, parts: _Parts) -> list:
    return [
        _evaluation_item(codes.measurement_code(m.key, m.name), _not_computed_status(m), parts,
                         modifiers=[(codes.CAVEAT, codes.caveat_code(f)) for f in m.flags])
        for m in analysis.measurements if m.value is None
    ]


def _classifications(analysis: Analysis, parts: _Parts) -> list:
    return [_evaluation_item(codes.CLASSIFICATIONS[c.key], codes.CATEGORIES[c.category], parts)
            for c in analysis.classifications]


def _tracing_status(result: InferenceResult, parts: _Parts) -> list:
    """Whether Stage 0 worked: a degraded tracing deserves a closer look by the reader."""
    return [_evaluation_item(codes.TRACING_STATUS, codes.TRACING_STATUSES[bool(result.degraded)], parts)]


def _quality_control(result: InferenceResult, parts: _Parts) -> list:
    """The quality gate's verdict, qualified by its reasons and the doubtful landmarks."""
    found = qc_content.sr_evaluation(result)
    if found is None:
        return []
    name, value, modifiers = found
    return [_evaluation_item(name, value, parts, modifiers=modifiers)]


def _normality(m: CephMeasurement, parts: _Parts) -> list[tuple]:
    """Where the value lies against the norm, as a coded evaluation. (TID 310 measurement properties
    would carry the norm's numbers, but pixelmed's TID 300 does not accept them, so the norm
    itself is in the tracing sheet and the GSPS text.)"""
    code = codes.NORMALITY.get(m.status)
    return [(parts.concept(codes.NORMALITY_CONCEPT), parts.concept(code))] if code is not None else []


def _measurement_group(m: CephMeasurement, parts: _Parts, track_uid: str, algo,
                       drawing: Drawing | None = None, label_at=None):
    """A computed measurement (value not None); left-out ones go to _omitted_measurements.
    `drawing`: where and as which OHIF tool its lines are drawn (dicom_io.sr_layout), else the
    analysis's own polyline, no tool; `label_at`: where a tracking viewer writes its value
    (dicom_io.sr_labels). The group's Finding is the measurement itself ("SNA"): OHIF lists a
    tracked measurement under its finding's meaning. (A Comment would name it as well, but OHIF
    also writes every Comment as a line of the untracked drawing's label, doubling each label.)"""
    code = parts.concept(codes.measurement_code(m.key, m.name))
    caveats = [(parts.concept(codes.CAVEAT), parts.concept(codes.caveat_code(f))) for f in m.flags]
    tool = None if drawing is None else drawing.tool
    # The analysis (Steiner, Downs...) is the measurement's method: a TID 300 concept modifier.
    return CONTENT.group(
        parts, track_uid=track_uid, identifier=tracking_identifier(tool, f"{m.analysis} {m.name}", m.name),
        finding=code, algo=algo, name=code, value=float(m.value), unit=parts.concept(codes.UNITS[m.unit]),
        method=parts.concept(codes.ANALYSES[m.analysis]), graphic_type="POLYLINE",
        graphic_data=scoord(m.polyline if drawing is None else drawing.points),
        evaluations=[*_normality(m, parts), *caveats],
        extra=[] if label_at is None else [CONTENT.text_position(parts, label_at)],
    )


def _has_geometry(group) -> bool:
    def walk(items) -> bool:
        return any(it.ValueType in ("SCOORD", "SCOORD3D") or walk(it.get("ContentSequence", [])) for it in items)
    return walk(group[0].ContentSequence)


def build_sr(
    source: Dataset,
    result: InferenceResult,
    analysis: Analysis,
    *,
    pack_name: str,
    pack_version: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
) -> ComprehensiveSR:
    src_uid = str(source.SOPInstanceUID)

    def uid(kind: str) -> str:
        return derived_uid(src_uid, pack_version, kind)

    algo = algorithm(pack_name, pack_version)
    parts = _Parts(source)
    # Imaging Measurements: only groups a viewer can draw (see the module docstring). Each
    # measurement's lines drawn in the shape of an OHIF tool where one fits, and so that labels
    # do not pile up (dicom_io.sr_layout); each label's place when OHIF tracks them (sr_labels).
    cols, rows = int(source.Columns), int(source.Rows)
    drawn = measurement_drawings(result, analysis, cols, rows)
    landmark_at, measurement_at = label_positions(result, analysis, drawn, cols, rows)
    groups: list = [_landmark_group(lm, parts, uid(f"sr-track-landmark-{lm.name}"), algo, landmark_at.get(lm.name))
                    for lm in result.landmarks if lm.available]
    groups += [_measurement_group(m, parts, uid(f"sr-track-measurement-{m.key}"), algo, drawn[m.key],
                                  measurement_at.get(m.key))
               for m in analysis.measurements if m.value is not None]
    # Report-level Qualitative Evaluations: everything without geometry. A further verdict on
    # the whole report (a quality gate, say) is one more list of CODE items here.
    if qc_content.failed(result):
        # A tracing the quality gate failed is withheld: the verdict and its reasons, no values.
        evaluations: list = [*_tracing_status(result, parts), *_quality_control(result, parts)]
    else:
        evaluations = [
            *_unavailable_landmarks(result, parts),
            *_omitted_measurements(analysis, parts),
            *_classifications(analysis, parts),
            *_tracing_status(result, parts),
            *_quality_control(result, parts),
        ]
    if not all(_has_geometry(g) for g in groups):
        raise AssertionError("a group without SCOORD in Imaging Measurements breaks OHIF's SR loader; "
                             "put it in the report-level Qualitative Evaluations instead")
    # Nothing to draw (a tracing the quality gate withheld): TID 1500 then has no Imaging
    # Measurements container, only the Qualitative Evaluations (at least one of the two must be
    # there). highdicom 0.28 insists on one group, so a placeholder goes in and the container
    # comes out again below.
    placeholder = not groups
    if placeholder:
        groups = [MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=uid("sr-track-placeholder"), identifier="placeholder"),
            qualitative_evaluations=[parts.evaluation(codes.TRACING_STATUS, codes.TRACING_STATUSES[True])])]

    observer = ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uid("sr-device"), name="cephnode", manufacturer_name=MANUFACTURER, model_name=pack_name[:64],
        ),
    )
    # TID 1500 puts Qualitative Evaluations after Imaging Measurements; highdicom 0.28 builds
    # no such container, so it is appended to the root (sr_templates.report).
    root = CONTENT.report(
        parts, observation_context=ObservationContext(observer_device_context=observer),
        procedure=codes.PROCEDURE, groups=groups, library=[_library_view(source)],
        evaluations=CONTENT.container(parts, codes.QUALITATIVE_EVALUATIONS, evaluations),
        drop_measurements=placeholder,
    )
    sr = ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"Cephalometric tracing SR ({pack_name} {pack_version})"[:64],
        coding_schemes=codes.coding_scheme_identification(cornerstone=True),
    )
    return sr
