"""What the node accepts on the wire: storage SOP classes of projection radiographs and the
transfer syntaxes pydicom can decode here with permissively licensed decoders only (its own
handlers, GDCM, Pillow, pyjpegls, pylibjpeg-openjpeg/-rle; see pyproject.toml), plus our GDCM
plugin for 12-bit JPEG Extended (dicom_io/jpeg12.py)."""
from __future__ import annotations

from functools import lru_cache

from pydicom.pixels import get_decoder
from pydicom.pixels.decoders import JPEGExtended12BitDecoder
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES

# Projection radiographs a cephalostat or a PACS may forward. Intra-oral images are accepted
# (acknowledged and kept) but the default selection rules do not trace them.
RADIOGRAPH_STORAGE_CLASSES: tuple[UID, ...] = (
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)


_registered = False


def register_decoders() -> None:
    """Add our plugins to pydicom's decoders (once per process; called on import)."""
    global _registered
    if not _registered:
        JPEGExtended12BitDecoder.add_plugin("cephnode-gdcm12", ("cephnode.dicom_io.jpeg12", "decode_frame"))
        _registered = True


register_decoders()


@lru_cache(maxsize=None)
def can_decode(transfer_syntax: str) -> bool:
    """True when pydicom has a working pixel decoder for this transfer syntax here."""
    uid = UID(transfer_syntax)
    if uid in _UNCOMPRESSED:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def decodable_transfer_syntaxes() -> list[UID]:
    return [UID(ts) for ts in ALL_TRANSFER_SYNTAXES if can_decode(ts)]


def accepted_transfer_syntaxes() -> list[UID]:
    """Everything pynetdicom knows, decodable ones first. Undecodable syntaxes are accepted on
    purpose: the instance is then kept in the spool and its job fails with a clear reason,
    instead of the sender seeing an anonymous negotiation failure."""
    decodable = decodable_transfer_syntaxes()
    return decodable + [UID(ts) for ts in ALL_TRANSFER_SYNTAXES if UID(ts) not in decodable]


def describe(transfer_syntax: str) -> str:
    uid = UID(transfer_syntax)
    return f"{uid.name} ({uid})" if uid.is_valid and uid.name != str(uid) else str(uid)
