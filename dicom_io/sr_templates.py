"""The SR's content items made with highdicom's TID 1500 classes: the reference for dicom_io.sr_content.

dicom_io.sr decides what the report says and in which order; it has its content items made by
one of two modules with the same functions. This one uses highdicom's template and content-item
classes as they are. dicom_io.sr_content (what the node uses) makes the same items as plain
pydicom datasets, without highdicom's per-item checks and conversions; tests/test_report_sr_fast.py
builds each report both ways and requires equal datasets and equal bytes. So this module is what
says, in highdicom's own terms, what every item must be.
"""
from __future__ import annotations

import numpy as np
from highdicom.sr import (
    CoordinatesForMeasurement,
    GraphicTypeValues,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    TrackingIdentifier,
)
from highdicom.sr.value_types import (
    CodeContentItem,
    ContainerContentItem,
    RelationshipTypeValues,
    ScoordContentItem,
    TextContentItem,
)
from pydicom.sr.codedict import codes as dcm_codes

from cephnode.dicom_io import codes


def group(parts, *, track_uid: str, identifier: str, finding, algo, name, value: float, unit, method,
          graphic_type: str, graphic_data: np.ndarray, evaluations, extra=()) -> MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group holding one TID 300 measurement INFERRED FROM one SCOORD on the source
    image; `evaluations` (name, value) pairs become its qualitative evaluations, `extra` items
    are appended to the group (a Comment, a label position)."""
    coordinates = CoordinatesForMeasurement(graphic_type=GraphicTypeValues(graphic_type), graphic_data=graphic_data,
                                            source_image=parts.source_image)
    num = Measurement(name=name, value=value, unit=unit, method=method, referenced_coordinates=[coordinates])
    made = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=track_uid, identifier=identifier),
        finding_type=finding, algorithm_id=algo, measurements=[num],
        qualitative_evaluations=[QualitativeEvaluation(n, v) for n, v in evaluations] or None,
    )
    made[0].ContentSequence.extend(extra)
    return made


def comment(parts, text: str) -> TextContentItem:
    return TextContentItem(name=codes.COMMENT, value=text, relationship_type=RelationshipTypeValues.CONTAINS)


def text_position(parts, at) -> ScoordContentItem:
    """Cornerstone's (TextPosition, 99CS3D) POINT, SELECTED FROM the source image."""
    item = ScoordContentItem(name=parts.concept(codes.TEXT_POSITION), graphic_type=GraphicTypeValues.POINT,
                             graphic_data=np.asarray(at, dtype=float).reshape(1, 2),
                             relationship_type=RelationshipTypeValues.CONTAINS)
    item.ContentSequence = [parts.source_image]
    return item


def code_item(parts, name, value, *, modifiers=()) -> CodeContentItem:
    """A CODE item CONTAINS, qualified by `modifiers` (name, value) pairs (HAS CONCEPT MOD)."""
    item = CodeContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)
    if modifiers:
        item.ContentSequence = [CodeContentItem(name=n, value=v, relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD)
                                for n, v in modifiers]
    return item


def container(parts, name, items) -> ContainerContentItem:
    made = ContainerContentItem(name=name, relationship_type=RelationshipTypeValues.CONTAINS)
    made.ContentSequence = items
    return made


def report(parts, *, observation_context, procedure, groups, library, evaluations,
           drop_measurements: bool) -> ContainerContentItem:
    """TID 1500's root item: highdicom's MeasurementReport with `groups` in its Imaging
    Measurements (left out again when `drop_measurements`), then the `evaluations` container."""
    root = MeasurementReport(observation_context=observation_context, procedure_reported=procedure,
                             imaging_measurements=groups, referenced_images=library)[0]
    if drop_measurements:
        root.ContentSequence = [it for it in root.ContentSequence if not is_imaging_measurements(it)]
    root.ContentSequence.append(evaluations)
    return root


def is_imaging_measurements(item) -> bool:
    return item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.ImagingMeasurements.value
