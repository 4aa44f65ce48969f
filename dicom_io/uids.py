"""Deterministic UIDs: a retry after a crash must produce the very same objects."""
from __future__ import annotations

import hashlib

from pydicom.uid import UID


def derived_uid(source_sop_instance_uid: str, pack_version: str, kind: str) -> UID:
    """A UID in the 2.25 (UUID-derived) form that depends only on the input instance, the pack
    version and the kind of object ('sr', 'seg', 'gsps', 'sc', 'series-sr', ...).

    pydicom's generate_uid ignores entropy sources when asked for the 2.25 form, so the
    128-bit value is taken from a SHA-256 of the inputs, as PS3.5 B.2 allows for UUID-like UIDs.
    """
    digest = hashlib.sha256("\x00".join(("cephnode", source_sop_instance_uid, pack_version, kind)).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")
