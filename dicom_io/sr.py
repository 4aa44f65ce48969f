"""The landmarks and the cephalometric analysis as a Comprehensive SR (TID 1500), with highdicom.

Layout (shared/spec/dicom-output.md):
- one TID 1410 planar-ROI group per available landmark: SCOORD POINT on the source image, its
  own tracking identifier + UID, the landmark as finding type, the detection confidence (NUM)
  and its level and source (model / stated rule) as coded evaluations;
- one TID 1501 group per unavailable landmark, saying so;
- one TID 1501 group per measurement: a TID 300 NUM with ONE INFERRED FROM SCOORD POLYLINE
  (OHIF draws the first SCOORD of a group and labels it with the NUM's meaning, value, unit) and
  the analysis as its method; normality and caveats as coded evaluations; measurements the
  analysis left out get a group that says why, with no NUM;
- one TID 1501 group with the classifications as coded evaluations, one with the tracing status
  (full, or degraded when Stage 0 failed);
- the Image Library listing the source image; algorithm name + pack version on every group.

SCOORD convention: DICOM puts (0, 0) at the top-left CORNER of the first pixel, landmarks are
in pixel-centre coordinates, so every coordinate is written as (x + 0.5, y + 0.5).
"""
from __future__ import annotations

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from cephnode.cephalometry.analysis import Analysis
from cephnode.cephalometry.analysis import Measurement as CephMeasurement
from cephnode.dicom_io import codes
from cephnode.dicom_io.uids import derived_uid
from cephnode.inference.result import InferenceResult, Landmark

PIXEL_CORNER_OFFSET = 0.5
MANUFACTURER = "cephnode"


class _Parts:
    """Content that many items of one report repeat, built once per report and shared.

    The report's groups repeat the same few dozen codes and the same source-image reference
    hundreds of times. highdicom deep-copies and re-reads the whole content tree when it makes
    the SR, and a deep copy copies a shared object once, so sharing them (instead of having
    highdicom make a fresh CodedConcept from each pydicom Code) halves that work. The values
    written are the same. Per report, never module-wide: nothing is shared between two SRs.
    """

    def __init__(self, source: Dataset) -> None:
        self._concepts: dict[tuple, CodedConcept] = {}
        self.source_image = SourceImageForRegion.from_source_image(source)

    def concept(self, code) -> CodedConcept:
        # Keyed on every field: pydicom's Code compares value and scheme only, not the meaning.
        key = (code.value, code.scheme_designator, code.meaning, code.scheme_version)
        found = self._concepts.get(key)
        if found is None:
            found = self._concepts[key] = CodedConcept.from_code(code)
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


def _landmark_group(lm: Landmark, parts: _Parts, track_uid: str, algo) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POINT,
        graphic_data=scoord([(lm.x, lm.y)]),
        source_image=parts.source_image,
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=track_uid, identifier=f"Landmark {lm.name}"),
        referenced_region=region,
        finding_type=parts.concept(codes.LANDMARKS[lm.name]),
        algorithm_id=algo,
        measurements=[Measurement(name=parts.concept(codes.LANDMARK_CONFIDENCE), value=float(lm.confidence),
                                  unit=parts.concept(codes.UNITS["1"]))],
        qualitative_evaluations=[
            parts.evaluation(codes.LANDMARK_CONFIDENCE_LEVEL, codes.CONFIDENCE_LEVELS[lm.level]),
            parts.evaluation(codes.LANDMARK_SOURCE, codes.LANDMARK_SOURCES[_landmark_source(lm)]),
        ],
    )


def _unavailable_landmark_group(lm: Landmark, parts: _Parts, track_uid: str, algo) -> MeasurementsAndQualitativeEvaluations:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=track_uid, identifier=f"Landmark {lm.name} (not available)"),
        finding_type=parts.concept(codes.LANDMARKS[lm.name]),
        algorithm_id=algo,
        qualitative_evaluations=[
            parts.evaluation(codes.LANDMARK_SOURCE, codes.LANDMARK_SOURCES["unavailable"]),
            parts.evaluation(codes.LANDMARK_CONFIDENCE_LEVEL, codes.CONFIDENCE_LEVELS["unavailable"]),
        ],
    )


def _normality(m: CephMeasurement, parts: _Parts) -> list[QualitativeEvaluation]:
    """Where the value lies against the norm, as a coded evaluation. (TID 310 measurement properties
    would carry the norm's numbers, but pixelmed's TID 300 does not accept them, so the norm
    itself is in the tracing sheet and the GSPS text.)"""
    code = codes.NORMALITY.get(m.status)
    return [parts.evaluation(codes.NORMALITY_CONCEPT, code)] if code is not None else []


def _measurement_group(m: CephMeasurement, parts: _Parts, track_uid: str, algo) -> MeasurementsAndQualitativeEvaluations:
    code = parts.concept(codes.measurement_code(m.key, m.name))
    caveats = [parts.evaluation(codes.CAVEAT, codes.caveat_code(f)) for f in m.flags]
    tracking = TrackingIdentifier(uid=track_uid, identifier=f"{m.analysis} {m.name}")
    if m.value is None:
        if any(f.startswith("unavailable:") for f in m.flags):
            status = codes.NOT_COMPUTED_LANDMARK
        elif "spacing-unknown" in m.flags:
            status = codes.NOT_COMPUTED_SPACING
        else:
            status = codes.NOT_COMPUTED_DEGENERATE
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=parts.concept(codes.KINDS[m.kind]),
            algorithm_id=algo, qualitative_evaluations=[parts.evaluation(code, status), *caveats],
        )
    line = CoordinatesForMeasurement(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=scoord(m.polyline),
        source_image=parts.source_image,
    )
    # The analysis (Steiner, Downs...) is the measurement's method: a TID 300 concept modifier.
    num = Measurement(name=code, value=float(m.value), unit=parts.concept(codes.UNITS[m.unit]),
                      method=parts.concept(codes.ANALYSES[m.analysis]), referenced_coordinates=[line])
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=parts.concept(codes.KINDS[m.kind]),
        algorithm_id=algo, measurements=[num], qualitative_evaluations=[*_normality(m, parts), *caveats] or None,
    )


def _classification_group(analysis: Analysis, track_uid: str, algo) -> MeasurementsAndQualitativeEvaluations:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=track_uid, identifier="Cephalometric classification"),
        finding_type=codes.CLASSIFICATION,
        algorithm_id=algo,
        qualitative_evaluations=[
            QualitativeEvaluation(codes.CLASSIFICATIONS[c.key], codes.CATEGORIES[c.category])
            for c in analysis.classifications
        ],
    )


def _process_group(result: InferenceResult, track_uid: str, algo) -> MeasurementsAndQualitativeEvaluations:
    """Whether Stage 0 worked: a degraded tracing deserves a closer look by the reader."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=track_uid, identifier="Tracing status"),
        finding_type=codes.TRACING_PROCESS,
        algorithm_id=algo,
        qualitative_evaluations=[QualitativeEvaluation(codes.TRACING_STATUS, codes.TRACING_STATUSES[bool(result.degraded)])],
    )


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
    groups: list = []
    for lm in result.landmarks:
        if lm.available:
            groups.append(_landmark_group(lm, parts, uid(f"sr-track-landmark-{lm.name}"), algo))
    for lm in result.landmarks:
        if not lm.available:
            groups.append(_unavailable_landmark_group(lm, parts, uid(f"sr-track-landmark-{lm.name}"), algo))
    for m in analysis.measurements:
        groups.append(_measurement_group(m, parts, uid(f"sr-track-measurement-{m.key}"), algo))
    groups.append(_classification_group(analysis, uid("sr-track-classification"), algo))
    groups.append(_process_group(result, uid("sr-track-process"), algo))

    observer = ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uid("sr-device"), name="cephnode", manufacturer_name=MANUFACTURER, model_name=pack_name[:64],
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[_library_view(source)],
    )
    sr = ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"Cephalometric tracing SR ({pack_name} {pack_version})"[:64],
        coding_schemes=codes.coding_scheme_identification(),
    )
    return sr
