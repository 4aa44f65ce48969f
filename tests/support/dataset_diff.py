"""Element-by-element comparison of two datasets, for tests that require two builds to be the same.

pydicom's Dataset equality compares values, but highdicom's CodedConcept overrides it to compare
a code's value and scheme only (not its meaning or version), so two trees can be "equal" with a
different Code Meaning. This walks both trees and compares every element's tag, VR and value,
recursing into every sequence item.
"""
from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset


def differences(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Where `a` and `b` differ ([] when every element is the same, recursively)."""
    found: list[str] = []
    tags_a, tags_b = set(a.keys()), set(b.keys())
    for tag in sorted(tags_a ^ tags_b):
        found.append(f"{path}{tag}: only in {'first' if tag in tags_a else 'second'}")
    for tag in sorted(tags_a & tags_b):
        ea, eb = a[tag], b[tag]
        where = f"{path}{ea.keyword or tag}"
        if ea.VR != eb.VR:
            found.append(f"{where}: VR {ea.VR} != {eb.VR}")
        elif ea.VR == "SQ":
            if len(ea.value) != len(eb.value):
                found.append(f"{where}: {len(ea.value)} != {len(eb.value)} items")
            for i, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                found += differences(ia, ib, f"{where}[{i}].")
        elif ea.value != eb.value or str(ea.value) != str(eb.value):
            found.append(f"{where}: {ea.value!r} != {eb.value!r}")
    return found


def saved_bytes(ds: Dataset) -> bytes:
    """The file pydicom's own writer makes of `ds`: the byte-for-byte reference for fast paths."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
