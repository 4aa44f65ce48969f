"""Which received instances are traced: the configured selection rules, applied to the header."""
from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from cephnode.config.schema import SelectionRules


@dataclass(frozen=True)
class Verdict:
    selected: bool
    reason: str          # why it was skipped, or "selected"


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element must not stop the decision
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def evaluate(ds: Dataset, sop_class: str, rules: SelectionRules) -> Verdict:
    if sop_class not in rules.sop_classes:
        return Verdict(False, f"SOP class {UID(sop_class).name} ({sop_class}) is not selected")
    modality = _text(ds, "Modality").upper()
    if modality not in rules.modalities:
        return Verdict(False, f"modality {modality or '(none)'} is not one of {', '.join(rules.modalities)}")
    body_part = _text(ds, "BodyPartExamined").upper()
    if body_part:
        if body_part not in rules.body_parts:
            return Verdict(False, f"body part {body_part} is not one of {', '.join(rules.body_parts)}")
    elif not rules.body_part_missing_ok:
        return Verdict(False, "body part is missing")
    view = _text(ds, "ViewPosition").upper()
    if view:
        if view not in rules.view_positions:
            return Verdict(False, f"view position {view} is not lateral ({', '.join(rules.view_positions)})")
    elif not rules.view_position_missing_ok:
        return Verdict(False, "view position is missing")
    description = _text(ds, "SeriesDescription")
    for pattern in rules.series_description_exclude:
        if re.search(pattern, description, re.IGNORECASE):
            return Verdict(False, f"series description {description!r} matches exclusion {pattern!r}")
    if rules.series_description_include and not any(
            re.search(p, description, re.IGNORECASE) for p in rules.series_description_include):
        return Verdict(False, f"series description {description!r} matches no inclusion pattern")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is not None and cols is not None:
        if rows < rules.min_rows or cols < rules.min_columns:
            return Verdict(False, f"image {rows} x {cols} is smaller than {rules.min_rows} x {rules.min_columns}")
        if (rules.max_rows is not None and rows > rules.max_rows) or (
                rules.max_columns is not None and cols > rules.max_columns):
            return Verdict(False, f"image {rows} x {cols} is larger than {rules.max_rows} x {rules.max_columns}")
    # Missing Rows/Columns or Pixel Data: selected, so the job fails with the decoder's reason.
    return Verdict(True, "selected")
