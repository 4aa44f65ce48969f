"""One C-STORE with pynetdicom, proposing exactly the file's own SOP class and transfer syntax
(storescu would convert or refuse some of the files the tests send); returns the status."""
from __future__ import annotations

from pathlib import Path

import pydicom
from pynetdicom import AE


def c_store(path: Path, port: int, *, called_ae: str = "CEPHNODE", calling_ae: str = "MODALITY",
            host: str = "127.0.0.1") -> int:
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(meta.file_meta.MediaStorageSOPClassUID, [meta.file_meta.TransferSyntaxUID])
    assoc = ae.associate(host, port, ae_title=called_ae)
    assert assoc.is_established, f"no association with {called_ae}@{host}:{port}"
    try:
        return int(assoc.send_c_store(str(path)).Status)
    finally:
        assoc.release()
