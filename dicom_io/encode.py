"""A dataset to the bytes of a DICOM file, as pydicom writes them, faster for large SR trees.

Why (issue 14, profiled on the SR of a 2000 x 2500 source, ~1,500 content items and ~5,600
elements): `Dataset.save_as` took about 100 ms, nearly all of it generic per-element work
repeated on every element of the content tree: character-set look-ups, an ambiguous-VR pass
over the whole tree, a new buffer per element. Most of the tree's elements are the same few
values over and over (relationship and value types, code values, scheme designators, code
meanings).

So `file_bytes` writes every top-level sequence itself, walking the tree in tag order as pydicom
does, and gets each leaf element's bytes from pydicom's own `write_data_element`, remembered per
(tag, VR, value, character set): the same element is encoded once per process, not once per
item. The walked sequences go back to pydicom as raw (already encoded) elements, and pydicom
writes the preamble, the file meta and the top-level elements as usual. The result is the very
bytes `save_as(..., enforce_file_format=True)` writes (tests/test_encode.py compares them for
SR, SEG, GSPS and the tracing sheet). Anything this writer does not handle the same way (a raw
or ambiguous-VR element, an item of undefined length) makes it hand the whole dataset to
pydicom instead.
"""
from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, dcmwrite, write_data_element
from pydicom.valuerep import AMBIGUOUS_VR

_ITEM = struct.Struct("<HHI")
_SQ_HEADER = struct.Struct("<HH2sHI")  # tag, VR, reserved, 4-byte length
_MEMO_LIMIT = 200_000                 # remembered leaf elements per process (a few MB)
_memo: dict[tuple, bytes] = {}
_CHARSET = 0x00080005                 # Specific Character Set


class _Unsupported(Exception):
    """Something pydicom writes in a way this writer does not copy: let pydicom write it all."""


def file_bytes(ds: Dataset) -> bytes:
    """The bytes of `ds.save_as(buf, enforce_file_format=True)`, for an Explicit VR Little
    Endian (or encapsulated) dataset built in memory."""
    try:
        return _fast(ds)
    except _Unsupported:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def _fast(ds: Dataset) -> bytes:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or ts.is_implicit_VR or not ts.is_little_endian or ts.is_deflated:
        raise _Unsupported
    if ds.original_encoding != (None, None):
        raise _Unsupported                       # read from a file: pydicom's conversions apply
    encoding = ds.get("SpecificCharacterSet", "iso8859")
    shared: dict[int, bytes] = {}     # id() of an item already written in this call -> its bytes
    shallow = Dataset()
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            raise _Unsupported
        if elem.VR in AMBIGUOUS_VR:
            # a top-level element such as a SEG's Pixel Data ("OB or OW"): resolved in place by
            # pydicom's own rule from the dataset, as save_as does
            elem = correct_ambiguous_vr_element(elem, ds, True)
        if len(elem.VR or "") != 2:
            raise _Unsupported
        if elem.VR == "SQ":
            if elem.is_undefined_length:
                raise _Unsupported
            body = _items(elem.value, convert_encodings(encoding), shared)
            elem = RawDataElement(tag, "SQ", len(body), body, 0, False, True)
        shallow._dict[tag] = elem
    shallow.file_meta = meta
    shallow.preamble = ds.preamble
    # written as if read from Explicit VR Little Endian: pydicom writes the raw sequences as
    # they are instead of converting the dataset (its ambiguous-VR pass walks the whole tree)
    shallow.set_original_encoding(False, True, ds._character_set)
    out = BytesIO()
    dcmwrite(out, shallow, enforce_file_format=True)
    return out.getvalue()


def _items(items: Any, encodings: Any, shared: dict[int, bytes], memo_key: Any = None) -> bytes:
    if memo_key is None:
        memo_key = tuple(encodings) if isinstance(encodings, list) else encodings
    parts: list[bytes] = []
    for item in items:
        if getattr(item, "is_undefined_length_sequence_item", False):
            raise _Unsupported
        # An item that is one object in many places (the SR's codes, its source-image reference:
        # dicom_io.sr_content shares them as highdicom does) is encoded the first time it is met
        # and its bytes reused: the tree does not change while it is written. A third of the
        # SR's encoding (issue 14).
        body = shared.get(id(item))
        if body is None:
            body = shared[id(item)] = _dataset(item, encodings, memo_key, shared)
        parts.append(_ITEM.pack(0xFFFE, 0xE000, len(body)))
        parts.append(body)
    return b"".join(parts)


def _tag_order(pair: tuple) -> int:
    return int(pair[0])              # (a plain int sorts without BaseTag's Python-level comparisons)


def _dataset(ds: Dataset, encodings: Any, memo_key: Any, shared: dict[int, bytes]) -> bytes:
    elements = ds._dict                         # read directly: the walk visits every element once
    if _CHARSET in elements:
        raise _Unsupported                       # an item with its own character set
    parts: list[bytes] = []
    for tag, elem in sorted(elements.items(), key=_tag_order):
        if not tag & 0xFFFF and tag >> 16 > 6:   # retired group length: pydicom leaves it out
            continue
        if isinstance(elem, RawDataElement):
            raise _Unsupported
        vr = elem.VR
        if vr == "SQ":
            if elem.is_undefined_length:
                raise _Unsupported
            body = _items(elem.value, encodings, shared, memo_key)
            parts.append(_SQ_HEADER.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, len(body)))
            parts.append(body)
        else:
            parts.append(_leaf(elem, vr, encodings, memo_key))
    return b"".join(parts)


def _leaf(elem: DataElement, vr: str, encodings: Any, memo_key: Any) -> bytes:
    value = elem.value
    kind = type(value)
    key = None
    if kind is str or kind is int or kind is float:       # exact types: a DSfloat keeps its own text
        key = (elem.tag, vr, kind, value, memo_key)
        hit = _memo.get(key)
        if hit is not None:
            return hit
    if len(vr or "") != 2:
        raise _Unsupported
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    data = fp.getvalue()
    if key is not None:
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[key] = data
    return data
