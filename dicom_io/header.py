"""Read a received instance's header from its file with bounded memory.

The receive path never holds a whole data set: pixels are not read (stop_before_pixels),
large non-pixel values stay on disk (defer_size), and a deflated data set is inflated as a
stream whose first HEADER_PREFIX bytes are kept for parsing and whose total is only counted,
stopping at the instance limit, so a deflate bomb costs a few MB, not gigabytes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

HEADER_PREFIX = 8 * 2**20
CHUNK = 1 * 2**20


@dataclass
class Header:
    ds: Dataset | None
    error: str | None = None          # why the header cannot be parsed
    too_large: int | None = None      # inflated size passed the limit (bytes seen)


def read_header(path: str | Path, transfer_syntax: str, *, max_bytes: int) -> Header:
    path = Path(path)
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            return _deflated(path, max_bytes)
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, defer_size="64 KB")
        _touch(ds)
        return Header(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom raises many types on hostile input (RecursionError too)
        return Header(None, f"cannot parse the dataset: {type(exc).__name__}")


def _touch(ds: Dataset) -> None:
    # pydicom converts lazily: touch the identifying elements now, so a wrong VR length
    # surfaces here and not later in a less helpful place.
    for kw in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
               "Rows", "Columns"):
        ds.get(kw)


def _deflated(path: Path, max_bytes: int) -> Header:
    with open(path, "rb") as fh:
        fh.seek(128 + 4)
        meta = _read_file_meta_info(fh)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        prefix = bytearray()
        total = 0
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            data = inflater.decompress(chunk, CHUNK * 4)
            while True:
                total += len(data)
                if len(prefix) < HEADER_PREFIX:
                    prefix.extend(data[: HEADER_PREFIX - len(prefix)])
                if total > max_bytes:
                    return Header(None, too_large=total)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, CHUNK * 4)
            if inflater.eof:
                break
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=False)
    buf.write(bytes(prefix))
    buf.seek(0)
    ds = pydicom.dcmread(buf, stop_before_pixels=True)
    _touch(ds)
    return Header(ds)
