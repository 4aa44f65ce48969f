"""Deterministic UIDs: a retry after a crash must produce the very same objects."""
from __future__ import annotations

from pydicom.uid import UID, generate_uid


def derived_uid(source_sop_instance_uid: str, pack_version: str, kind: str) -> UID:
    """A UID (2.25 form) that depends only on the input instance, the pack version and the kind
    of object ('sr', 'seg', 'gsps', 'sc', 'series-sr', ...)."""
    return generate_uid(prefix=None, entropy_srcs=["cephnode", source_sop_instance_uid, pack_version, kind])
