"""A deterministic generator of hostile DICOM inputs for the fuzz suite.

Each case is (name, hostile class, SOP class the sender puts in the C-STORE command, transfer
syntax, file bytes). The same seed gives the same few hundred cases on every machine. The
classes follow the hardening issue: truncations, byte flips in header and pixel data, wrong
dimensions, bombs of each codec, bad UIDs, nested sequences, mismatched classes, implausible
spacing and planted patient data.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from tests.support import dicomgen

DX = str(DigitalXRayImageStorageForPresentation)
PLANTED_NAME = "Zyxwvut Qqqpatient"      # no '^': highdicom warns and quotes it
PLANTED_BIRTH = "19071231"


@dataclass
class Case:
    name: str
    klass: str
    sop_class: str
    transfer_syntax: str
    data: bytes
    sop_uid: str


def _bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _meta_end(data: bytes) -> int:
    (group_len,) = struct.unpack("<I", data[140:144])
    return 144 + group_len


def _with_meta_class(data: bytes, sop_class: str) -> bytes:
    """The file with its meta header saying `sop_class` (the C-STORE command follows the meta
    header), whatever the data set says."""
    from pydicom.filewriter import write_file_meta_info

    end = _meta_end(data)
    meta = pydicom.dcmread(BytesIO(data[:end]), stop_before_pixels=True, force=True).file_meta
    meta.MediaStorageSOPClassUID = sop_class
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data[end:]


def _base(img: np.ndarray, variant: str, i: int, **kw) -> Dataset:
    ds = dicomgen.ceph_variant(img, variant, study_uid=f"1.2.826.0.1.3680043.10.1099.{i}", **kw)
    ds.PatientName = f"Fuzz^Case{i}"
    return ds


def generate_bombs(img: np.ndarray) -> list[Case]:
    return generate(img, only={"bombs", "oversize"})


def generate_mismatches(img: np.ndarray) -> list[Case]:
    return generate(img, only={"mismatched classes"})


def generate(img: np.ndarray, *, seed: int = 1099, only: set[str] | None = None) -> list[Case]:
    """Every hostile class (or only those named), the same cases for the same seed."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    scale = 1

    def want(klass: str) -> bool:
        return only is None or klass in only

    def add(name: str, klass: str, data: bytes, *, sop_class: str = DX, ts: str | None = None) -> None:
        try:
            meta = pydicom.dcmread(BytesIO(data[:_meta_end(data)] if len(data) > 144 else data),
                                   stop_before_pixels=True, force=True).file_meta
            sop = str(meta.MediaStorageSOPInstanceUID)
            ts = ts or str(meta.TransferSyntaxUID)
        except Exception:
            sop, ts = generate_uid(), ts or str(ExplicitVRLittleEndian)
        cases.append(Case(name, klass, sop_class, ts, data, sop))

    encodings = ["plain", "jpeg2000", "jpegls", "rle", "monochrome1"]

    # -- truncations: every encoding cut at 12 points from the meta header to the last byte
    if want('truncation'):
        for v in encodings:
            for k, frac in enumerate(np.linspace(0.02, 0.995, 14 * scale)):
                fresh = _bytes(_base(img, v, 100 + k))
                cut = max(_meta_end(fresh) + 1, int(len(fresh) * frac))
                add(f"truncated-{v}-{k}", "truncation", fresh[:cut])

    # -- byte flips in the header (dataset elements before the pixels)
    if want('header byte flips'):
        for k in range(60 * scale):
            v = encodings[k % len(encodings)]
            raw = bytearray(_bytes(_base(img, v, 200 + k)))
            start, stop = _meta_end(bytes(raw)), raw.find(b"\xe0\x7f\x10\x00")
            for _ in range(1 + k % 4):
                i = int(rng.integers(start, max(start + 1, stop)))
                raw[i] ^= int(rng.integers(1, 256))
            add(f"headerflip-{v}-{k}", "header byte flips", bytes(raw))

    # -- byte flips in the pixel data (codec headers included: the first bytes of each frame)
    if want('pixel byte flips'):
        for k in range(60 * scale):
            v = encodings[k % 4]
            raw = bytearray(_bytes(_base(img, v, 300 + k)))
            pix = raw.find(b"\xe0\x7f\x10\x00")
            for _ in range(1 + k % 6):
                near = k % 2 == 0   # half near the frame start, where codec headers are
                lo = pix + 12
                hi = min(len(raw), pix + 200) if near else len(raw)
                i = int(rng.integers(lo, hi))
                raw[i] ^= int(rng.integers(1, 256))
            add(f"pixelflip-{v}-{k}", "pixel byte flips", bytes(raw))

    # -- wrong dimensions: the header disagrees with the pixels or the codestream
    if want('wrong dimensions'):
        for k in range(24 * scale):
            v = encodings[k % 4]
            ds = _base(img, v, 400 + k)
            r, c = int(ds.Rows), int(ds.Columns)
            ds.Rows, ds.Columns = [(r + 1, c), (r, c * 2), (c, r), (r // 2, c), (65535, 65535), (64, 64000),
                                   (0, c), (r, 1)][k % 8]
            add(f"wrongdims-{v}-{k}", "wrong dimensions", _bytes(ds))

    # -- bombs: a small file whose codestream or header asks for gigabytes
    # deflate: ~300 MB of zeros in a few hundred KB; the receiver refuses it (0xA700)
    # uncompressed: huge Rows x Columns with a tiny Pixel Data
    if want('bombs'):
        ds = _base(img, "jpeg2000", 500)
        frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
        at = frame.find(b"\xff\x4f\xff\x51") + 8
        siz_big = bytearray(frame)
        siz_big[at:at + 8] = struct.pack(">II", 60000, 60000)
        for k, (rows, cols) in enumerate([(60000, 60000), (int(ds.Rows), int(ds.Columns))]):
            b = _base(img, "jpeg2000", 501 + k)
            b.PixelData = encapsulate([bytes(siz_big)])
            b.Rows, b.Columns = rows, cols
            add(f"bomb-j2k-siz-{k}", "bombs", _bytes(b))
        for k, (rows, cols) in enumerate([(12000, 12000), (7000, 7000)]):
            b = dicomgen.make_dx(np.zeros((64, 64), np.uint16), bits=16)
            b = dicomgen.compress(b, RLELossless)
            b.Rows, b.Columns = rows, cols
            add(f"bomb-rle-{k}", "bombs", _bytes(b))
        for k, (rows, cols) in enumerate([(60000, 60000), (7000, 7000)]):
            b = _base(img, "jpegls", 510 + k)
            fr = bytearray(next(pydicom.encaps.generate_frames(b.PixelData, number_of_frames=1)))
            sof = fr.find(b"\xff\xf7")
            fr[sof + 5:sof + 9] = struct.pack(">HH", rows, cols)
            b.PixelData = encapsulate([bytes(fr)])
            add(f"bomb-jpegls-sof-{k}", "bombs", _bytes(b))
        for k, mb in enumerate([300, 600]):
            b = dicomgen.make_dx(np.zeros((64, 64), np.uint8))
            b.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            payload = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, mb * 2**20)
            deflated = comp.compress(payload)
            zero = bytes(2**20)
            for _ in range(mb):
                deflated += comp.compress(zero)
            deflated += comp.flush()
            meta = _bytes(b)[:_meta_end(_bytes(b))]
            add(f"bomb-deflate-{mb}mb", "bombs", meta + deflated, ts=str(DeflatedExplicitVRLittleEndian))
        b = dicomgen.make_dx(np.zeros((64, 64), np.uint8))
        b.Rows, b.Columns = 40000, 40000
        add("bomb-raw-dims", "bombs", _bytes(b))

    # -- bad UIDs: path tricks, newlines, 60 KB of digits, letters
    if want('bad UIDs'):
        bad_uids = ["../../../../etc/passwd", "1.2.3\n{\"event\": \"forged\"}", "1." + "9" * 60000,
                    "1.2.abc.4", "1..2", "", "1.2.840.10008.1.2.01", "1.2.-3"]
        for k, bad in enumerate(bad_uids):
            for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
                ds = _base(img, "plain", 600 + 2 * k + (kw == "SeriesInstanceUID"))
                setattr(ds, kw, bad)
                add(f"baduid-{kw}-{k}", "bad UIDs", _bytes(ds))

    # -- nested sequences, deep enough to hit recursion limits (written as bytes: undefined-
    # length private sequences inside items, placed just before Patient's Name)
    if want('nested sequences'):
        for k, depth in enumerate([50, 400, 1500, 5000]):
            raw = _bytes(_base(img, "plain", 700 + k))
            cut = _meta_end(raw) + raw[_meta_end(raw):].find(b"\x10\x00\x10\x00PN")
            open_sq = b"\x09\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
            close_sq = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
            add(f"nested-{depth}", "nested sequences", raw[:cut] + open_sq * depth + close_sq * depth + raw[cut:])

    # -- mismatched classes: the data set says CT (or something else) under a DX command
    if want('mismatched classes'):
        for k, other in enumerate([str(CTImageStorage), "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"] * (2 * scale)):
            ds = _base(img, "plain", 800 + k)
            ds.SOPClassUID = other
            add(f"classmismatch-{k}", "mismatched classes", _with_meta_class(_bytes(ds), DX), sop_class=DX)

    # -- implausible pixel spacing: processed, with the spacing reported unknown
    if want('implausible spacing'):
        for k, sp in enumerate([(1e300, 1e300), (1e-9, 1e-9), (0.1, 50.0), (5.0, 5.0)]):
            ds = _base(img, "plain", 900 + k)
            ds.ImagerPixelSpacing = [f"{sp[0]:.6g}", f"{sp[1]:.6g}"]
            if "PixelSpacing" in ds:
                del ds.PixelSpacing
            ds.EstimatedRadiographicMagnificationFactor = 1.0
            add(f"spacing-{k}", "implausible spacing", _bytes(ds))

    # -- planted patient data: a name highdicom warns about, a malformed birth date
    if want('planted patient data'):
        for k in range(4):
            ds = _base(img, "plain", 950 + k)
            ds.PatientName = PLANTED_NAME
            ds.PatientBirthDate = PLANTED_BIRTH if k % 2 else "1907-12-31x"
            add(f"phi-{k}", "planted patient data", _bytes(ds))

    # -- oversize: a data set over limits.max_instance_mb (the test runs with a small limit)
    if want('oversize'):
        big = dicomgen.make_dx(np.full((3000, 3200), 7, np.uint16), bits=16)
        add("oversize-instance", "oversize", _bytes(big))

    return cases
