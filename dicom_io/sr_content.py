"""The SR's content items as plain pydicom datasets: what highdicom's TID 1500 classes make, faster.

Why (issue 14, profiled on a 2000 x 2500 source): building the report's ~1,000 content items
through highdicom's template and content-item classes took about 100 ms of CPU, nearly all of it
per-item work that gives the same result every time: type and enum checks, CodedConcept
look-ups, and pydicom's keyword look-up, value conversion and validation for each of ~4,000
attributes set by name. The items themselves are few shapes (CODE, TEXT, UIDREF, NUM, SCOORD,
CONTAINER) repeated with other values.

So this module writes those items directly: each is a Dataset whose elements are made from their
tag and VR and put in place, the codes are the report's shared CodedConcepts (dicom_io.sr._Parts,
made by highdicom), and the items that repeat unchanged within one report (the source-image
reference, the algorithm identification) are shared as highdicom shares them. The root of TID
1500 (language, observer context, procedure, image library) is still highdicom's MeasurementReport,
built around a stand-in group whose place the real groups then take.

dicom_io.sr_templates makes the same items with highdicom's classes, with the same functions;
tests/test_report_sr_fast.py builds reports both ways (normal, no spacing, review, failed,
degraded) and requires equal datasets (every element, recursively) and equal bytes. Values are
checked where they come from (dicom_io.sr, cephalometry): what highdicom would refuse is refused
there or by that test.

Treat the built tree as read-only: items that repeat are one object in many places, as in
highdicom's own tree.
"""
from __future__ import annotations

import numpy as np
from highdicom.sr import MeasurementReport, MeasurementsAndQualitativeEvaluations, TrackingIdentifier
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.valuerep import DS

from cephnode.dicom_io import codes

# tags of the SR content-item attributes written here
_CODE_SEQ = BaseTag(0x0040A043)            # Concept Name Code Sequence
_CONCEPT_CODE_SEQ = BaseTag(0x0040A168)    # Concept Code Sequence
_CONTENT_SEQ = BaseTag(0x0040A730)
_CONTINUITY = BaseTag(0x0040A050)
_FLOAT_VALUE = BaseTag(0x0040A161)         # Floating Point Value
_GRAPHIC_DATA = BaseTag(0x00700022)
_GRAPHIC_TYPE = BaseTag(0x00700023)
_MEASURED_VALUE_SEQ = BaseTag(0x0040A300)
_NUMERIC_VALUE = BaseTag(0x0040A30A)
_RELATIONSHIP = BaseTag(0x0040A010)
_TEMPLATE_SEQ = BaseTag(0x0040A504)        # Content Template Sequence
_TEXT_VALUE = BaseTag(0x0040A160)
_UID = BaseTag(0x0040A124)
_UNITS_SEQ = BaseTag(0x004008EA)           # Measurement Units Code Sequence
_VALUE_TYPE = BaseTag(0x0040A040)
_MAPPING_RESOURCE = BaseTag(0x00080105)
_TEMPLATE_ID = BaseTag(0x0040DB00)

_SOURCE = Code("260753009", "SCT", "Source")         # the SCOORD's name under a TID 300 NUM, as highdicom names it
_MEASUREMENT_METHOD = dcm_codes.SCT.MeasurementMethod


def _fixed(tag: BaseTag, vr: str, value) -> DataElement:
    """An element whose value is one of this module's literals (a relationship, a value type...)
    or a sequence: nothing for pydicom's value validation to find. The values that come from the
    report (texts, UIDs, coordinates, numbers) are validated as usual."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _item(relationship: str, value_type: str, name: Dataset) -> Dataset:
    """A content item's common part: Relationship Type, Value Type, Concept Name."""
    ds = Dataset()
    d = ds._dict          # set in place: the tags and VRs are known, no keyword look-up needed
    d[_RELATIONSHIP] = _fixed(_RELATIONSHIP, "CS", relationship)
    d[_VALUE_TYPE] = _fixed(_VALUE_TYPE, "CS", value_type)
    d[_CODE_SEQ] = _fixed(_CODE_SEQ, "SQ", Sequence([name]))
    return ds


def _children(ds: Dataset, items: list) -> None:
    ds._dict[_CONTENT_SEQ] = _fixed(_CONTENT_SEQ, "SQ", Sequence(items))


def _text(relationship: str, name: Dataset, text: str) -> Dataset:
    ds = _item(relationship, "TEXT", name)
    ds._dict[_TEXT_VALUE] = DataElement(_TEXT_VALUE, "UT", text)
    return ds


def _code(relationship: str, name: Dataset, value: Dataset) -> Dataset:
    ds = _item(relationship, "CODE", name)
    ds._dict[_CONCEPT_CODE_SEQ] = _fixed(_CONCEPT_CODE_SEQ, "SQ", Sequence([value]))
    return ds


def _scoord(relationship: str, name: Dataset, graphic_type: str, graphic_data: np.ndarray, image: Dataset) -> Dataset:
    ds = _item(relationship, "SCOORD", name)
    d = ds._dict
    d[_GRAPHIC_TYPE] = _fixed(_GRAPHIC_TYPE, "CS", graphic_type)
    d[_GRAPHIC_DATA] = DataElement(_GRAPHIC_DATA, "FL", graphic_data.flatten().tolist())
    _children(ds, [image])
    return ds


def _container(relationship: str, name: Dataset, template: Dataset | None = None) -> Dataset:
    ds = _item(relationship, "CONTAINER", name)
    d = ds._dict
    d[_CONTINUITY] = _fixed(_CONTINUITY, "CS", "CONTINUOUS")
    if template is not None:
        d[_TEMPLATE_SEQ] = _fixed(_TEMPLATE_SEQ, "SQ", Sequence([template]))
    return ds


def _template(parts, template_id: str) -> Dataset:
    """The Content Template Sequence item (DCMR, `template_id`), one per report."""
    key = ("template", template_id)
    found = parts.shared.get(key)
    if found is None:
        found = parts.shared[key] = Dataset()
        found._dict[_MAPPING_RESOURCE] = DataElement(_MAPPING_RESOURCE, "CS", "DCMR")
        found._dict[_TEMPLATE_ID] = DataElement(_TEMPLATE_ID, "CS", template_id)
    return found


def _num(parts, name, value: float, unit, children: list) -> Dataset:
    """TID 300's NUM: Numeric Value as highdicom writes it (DS auto-formatted) and the exact
    value as Floating Point Value."""
    ds = _item("CONTAINS", "NUM", name)
    measured = Dataset()
    m = measured._dict
    m[_UNITS_SEQ] = _fixed(_UNITS_SEQ, "SQ", Sequence([unit]))
    m[_NUMERIC_VALUE] = DataElement(_NUMERIC_VALUE, "DS", DS(value, auto_format=True))
    m[_FLOAT_VALUE] = DataElement(_FLOAT_VALUE, "FD", value)
    ds._dict[_MEASURED_VALUE_SEQ] = _fixed(_MEASURED_VALUE_SEQ, "SQ", Sequence([measured]))
    _children(ds, children)
    return ds


def group(parts, *, track_uid: str, identifier: str, finding, algo, name, value: float, unit, method,
          graphic_type: str, graphic_data: np.ndarray, evaluations, extra=()) -> list[Dataset]:
    """As sr_templates.group: [the TID 1501 group's CONTAINER]."""
    if not isinstance(value, float):
        raise TypeError("a measured value is written as a float (Numeric Value and Floating Point Value)")
    concept = parts.concept
    coordinates = _scoord("INFERRED FROM", concept(_SOURCE), graphic_type, graphic_data, parts.source_image)
    num_children = [] if method is None else [_code("HAS CONCEPT MOD", concept(_MEASUREMENT_METHOD), method)]
    num_children.append(coordinates)
    items = [
        _text("HAS OBS CONTEXT", concept(dcm_codes.DCM.TrackingIdentifier), identifier),
        _uidref("HAS OBS CONTEXT", concept(dcm_codes.DCM.TrackingUniqueIdentifier), track_uid),
        _code("CONTAINS", concept(dcm_codes.DCM.Finding), finding),
        *algo,
        _num(parts, name, value, unit, num_children),
        *(_code("CONTAINS", n, v) for n, v in evaluations),
        *extra,
    ]
    made = _container("CONTAINS", concept(dcm_codes.DCM.MeasurementGroup), _template(parts, "1501"))
    _children(made, items)
    return [made]


def _uidref(relationship: str, name: Dataset, uid: str) -> Dataset:
    ds = _item(relationship, "UIDREF", name)
    ds._dict[_UID] = DataElement(_UID, "UI", uid)
    return ds


def comment(parts, text: str) -> Dataset:
    return _text("CONTAINS", parts.concept(codes.COMMENT), text)


def text_position(parts, at) -> Dataset:
    return _scoord("CONTAINS", parts.concept(codes.TEXT_POSITION), "POINT",
                   np.asarray(at, dtype=float).reshape(1, 2), parts.source_image)


def code_item(parts, name, value, *, modifiers=()) -> Dataset:
    item = _code("CONTAINS", name, value)
    if modifiers:
        _children(item, [_code("HAS CONCEPT MOD", n, v) for n, v in modifiers])
    return item


def container(parts, name, items) -> Dataset:
    made = _container("CONTAINS", parts.concept(name))
    _children(made, list(items))
    return made


_STAND_IN_UID = "2.25.1"            # never written: the stand-in group is replaced


def report(parts, *, observation_context, procedure, groups, library, evaluations, drop_measurements: bool) -> Dataset:
    """As sr_templates.report. highdicom builds the root around a stand-in group (it takes only
    its own group objects), whose place the real groups take."""
    stand_in = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=_STAND_IN_UID, identifier="stand-in"))
    root = MeasurementReport(observation_context=observation_context, procedure_reported=procedure,
                             imaging_measurements=[stand_in], referenced_images=library)[0]
    items = []
    for item in root.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.ImagingMeasurements.value:
            if drop_measurements:
                continue
            _children(item, [g[0] for g in groups])
        items.append(item)
    items.append(evaluations)
    _children(root, items)
    return root
