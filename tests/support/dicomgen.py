"""Build DICOM projection radiographs from the real ISBI images, in several encodings.

Used as the modality's input in tests. Only the data is generated here; every test
sends it over real sockets or through real validators.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def read_grey(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(path)
    return img


ISBI_ROWS = 1200   # the stored ISBI 2015 images are 968 x 1200 at 0.2 mm


def make_dx(
    pixels: np.ndarray,
    *,
    pixel_spacing_mm: tuple[float, float] | None | str = "isbi",
    bits: int = 8,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    patient_orientation: tuple[str, str] | None = ("A", "F"),  # ISBI faces right: rows run anterior
    study_uid: str | None = None,
    patient_id: str = "CEPH-TEST-001",
    patient_name: str = "Test^Ceph",
    series_description: str = "LAT CEPH",
) -> Dataset:
    """A DX 'for presentation' instance, Explicit VR Little Endian, from an 8-bit grey array.

    bits > 8 stretches the 8-bit values over the wider range (as a 12/16-bit detector would
    deliver them); monochrome1 inverts the stored values and declares MONOCHROME1;
    window sets a VOI window (center, width) in stored-value units.
    pixel_spacing_mm "isbi" (the default): the spacing at which an ISBI skull has its real size
    in an image of this height (0.2 mm at ISBI's 1200 rows; 0.67 mm for one scaled to 0.3), so
    a downscaled test film still measures like a patient and passes the quality gate.
    """
    img = np.asarray(pixels)
    if pixel_spacing_mm == "isbi":
        pixel_spacing_mm = (ISBI_ROWS * 0.2 / img.shape[0],) * 2
    if bits > 8:
        scale = (2**bits - 1) / 255.0
        stored = np.round(img.astype(np.float64) * scale).astype(np.uint16)
    else:
        stored = img.astype(np.uint8)
    maxval = 2**bits - 1
    if monochrome1:
        stored = (maxval - stored.astype(np.int64)).astype(stored.dtype)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    now = dt.datetime.now()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19900101"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.Manufacturer = "cephnode tests"
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "SKULL"
    ds.ViewPosition = "LL"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if not monochrome1 else -1
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = None
    if pixel_spacing_mm is not None:
        ds.ImagerPixelSpacing = [f"{pixel_spacing_mm[0]:.6g}", f"{pixel_spacing_mm[1]:.6g}"]
        ds.EstimatedRadiographicMagnificationFactor = "1.0"
    else:
        del ds.ImagerPixelSpacing
    if patient_orientation is not None:
        ds.PatientOrientation = list(patient_orientation)
    else:
        ds.PatientOrientation = ""
    ds.DetectorType = "SCINTILLATOR"
    ds.ExposureTime = 100
    ds.KVP = 80
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.Laterality = ""
    ds.ImageLaterality = "U"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.6g}"
        ds.WindowWidth = f"{window[1]:.6g}"
    else:
        ds.WindowCenter = f"{(maxval + 1) / 2:.6g}"
        ds.WindowWidth = f"{maxval + 1:.6g}"
    ds.VOILUTFunction = "LINEAR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()
    return ds


def save(ds: Dataset, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def compress(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode with pydicom's encoders (RLE, JPEG-LS, JPEG 2000 via pylibjpeg/openjpeg)."""
    out = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds)))
    out.compress(transfer_syntax)
    return out


def _to_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---- lateral cephs in the encodings a real modality or PACS sends -------------------------
CEPH_VARIANTS = ("plain", "monochrome1", "window16", "jpeg2000", "mirrored", "rotated", "jpegls", "rle")


def ceph_variant(pixels: np.ndarray, variant: str, *, pixel_spacing_mm: tuple[float, float] = (0.2, 0.2),
                 **kw) -> Dataset:
    """A lateral ceph DX built from an ISBI image (faces right), encoded as `variant`:

    plain        8-bit MONOCHROME2, Explicit VR Little Endian
    monochrome1  12-bit MONOCHROME1 (inverted stored values)
    window16     16-bit stored, a VOI window narrower than the stored range
    jpeg2000     12-bit, JPEG 2000 lossless
    jpegls       12-bit, JPEG-LS lossless
    rle          16-bit, RLE lossless
    mirrored     the image mirrored left-right (face left), Patient Orientation P\\F
    rotated      the image turned 90 degrees counter-clockwise, Patient Orientation F\\P
                 (after the turn, increasing column points to the feet, increasing row to the back)
    """
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    img = np.asarray(pixels)
    if variant == "plain":
        return make_dx(img, pixel_spacing_mm=pixel_spacing_mm, **kw)
    if variant == "monochrome1":
        return make_dx(img, bits=12, monochrome1=True, pixel_spacing_mm=pixel_spacing_mm, **kw)
    if variant == "window16":
        # stored values span 0..65535; the window shows the middle 80 % (clipping the extremes)
        return make_dx(img, bits=16, window=(32768, 52428), pixel_spacing_mm=pixel_spacing_mm, **kw)
    if variant == "jpeg2000":
        return compress(make_dx(img, bits=12, pixel_spacing_mm=pixel_spacing_mm, **kw), JPEG2000Lossless)
    if variant == "jpegls":
        return compress(make_dx(img, bits=12, pixel_spacing_mm=pixel_spacing_mm, **kw), JPEGLSLossless)
    if variant == "rle":
        return compress(make_dx(img, bits=16, pixel_spacing_mm=pixel_spacing_mm, **kw), RLELossless)
    if variant == "mirrored":
        return make_dx(np.ascontiguousarray(img[:, ::-1]), patient_orientation=("P", "F"),
                       pixel_spacing_mm=pixel_spacing_mm, **kw)
    if variant == "rotated":
        rotated = np.ascontiguousarray(np.rot90(img, 1))
        sp = (pixel_spacing_mm[1], pixel_spacing_mm[0])
        return make_dx(rotated, patient_orientation=("F", "P"), pixel_spacing_mm=sp, **kw)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(CEPH_VARIANTS)}")


def isbi_image(case_id: str = "151", *, scale: float = 1.0) -> np.ndarray:
    """An ISBI test image (8-bit grey), optionally downscaled (area interpolation)."""
    from cephnode.training.isbi import data_dir

    img = read_grey(data_dir() / "images" / f"{case_id}.jpg")
    if scale != 1.0:
        h, w = img.shape
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return img


# ---- corrupt and hostile instances --------------------------------------------------------
def _file_bytes(ds: Dataset) -> bytes:
    return _to_bytes(ds)


def _with_meta(ds: Dataset, body: bytes) -> bytes:
    """Valid preamble + file meta of `ds`, followed by an arbitrary dataset body."""
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info

    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, ds.file_meta, enforce_standard=True)
    return buf.getvalue() + body


def hostile_files(folder: str | Path, pixels: np.ndarray) -> dict[str, Path]:
    """Files a broken or malicious sender could produce. Each has valid file meta (so a
    sender can still address it) and a damaged dataset. Returns name -> path."""
    from pydicom.uid import UID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}

    good = make_dx(pixels)
    raw = _file_bytes(good)
    out["truncated_pixels"] = raw[: len(raw) * 2 // 3]
    other = make_dx(pixels)  # its own SOP Instance UID
    meta_len = len(_with_meta(other, b""))
    out["truncated_header"] = _file_bytes(other)[: meta_len + 180]

    # wrong VR length: Patient's Name (0010,0010) PN claims 0x7FF0 bytes
    ds = make_dx(pixels)
    data = bytearray(_file_bytes(ds))
    i = data.find(b"\x10\x00\x10\x00PN")
    data[i + 6:i + 8] = (0x7FF0).to_bytes(2, "little")
    out["wrong_vr_length"] = bytes(data)

    # huge declared sizes: Rows x Columns of 65535 with a few bytes of pixels
    ds = make_dx(pixels[:64, :64])
    ds.Rows = ds.Columns = 65535
    out["huge_dimensions"] = _file_bytes(ds)

    # an element that declares ~4 GB (0xFFFFFFF0 bytes) in the middle of the dataset
    ds = make_dx(pixels)
    data = _file_bytes(ds)
    body_at = len(_with_meta(ds, b""))
    # a private OB element (0009,1010) inserted between two elements, declaring 0xFFFFFFF0 bytes
    cut = body_at + data[body_at:].find(b"\x10\x00\x10\x00PN")  # just before Patient's Name
    huge = b"\x09\x00\x10\x10OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + b"\x01\x02\x03\x04"
    out["huge_element_length"] = data[:cut] + huge + data[cut:]

    ds = make_dx(pixels)
    del ds.PixelData
    out["no_pixel_data"] = _file_bytes(ds)

    ds = make_dx(pixels)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    out["multi_frame"] = _file_bytes(ds)

    ds = make_dx(pixels)
    rgb = np.repeat(np.asarray(pixels, np.uint8)[..., None], 3, axis=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    out["colour"] = _file_bytes(ds)

    ds = make_dx(pixels)
    out["garbage_dataset"] = _with_meta(ds, np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes())

    # a transfer syntax this node cannot decode (JPEG 2000 Part 2 multi-component), junk frames
    ds = make_dx(pixels)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 98])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out["undecodable_syntax"] = _file_bytes(ds)

    paths = {}
    for name, data in out.items():
        p = folder / f"{name}.dcm"
        p.write_bytes(data)
        paths[name] = p
    return paths
