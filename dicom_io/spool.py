"""Durable on-disk storage of received instances and produced objects.

A file is written under a temporary name, fsync'ed, renamed into place (atomic on POSIX) and
its folder fsync'ed, so that after a power cut or kill -9 a file either exists whole under its
final name or not at all. The node answers a C-STORE with Success only after this.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1: no leading zeros


def is_valid_uid(value: str | None) -> bool:
    return bool(value) and len(value) <= 64 and bool(_UID.match(value))


def safe_name(uid: str | None) -> str:
    """A file-name-safe form of a UID. Valid UIDs are used as they are (readable for admins);
    anything else (a hostile '../../x' included) becomes a hash."""
    if uid is not None and is_valid_uid(uid):
        return uid
    return "invalid-" + hashlib.sha256((uid or "").encode("utf-8", "replace")).hexdigest()[:32]


def spool_path(spool_dir: Path, study_uid: str | None, sop_uid: str | None) -> Path:
    return Path(spool_dir) / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` durably and atomically; returns the path."""
    path = Path(path)
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    if created:
        _fsync_dir(path.parent.parent)  # the new folder's own entry must be durable too
    return path


def adopt_file(src: Path, path: Path) -> Path:
    """Move a file written elsewhere on the same filesystem (a received data set) to `path`
    with the same guarantee as write_atomic: fsync'ed, renamed, its folder fsync'ed."""
    path = Path(path)
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(src, 0o600)
    os.replace(src, path)
    _fsync_dir(path.parent)
    if created:
        _fsync_dir(path.parent.parent)
    return path


def remove_partials(folder: Path, *, older_than_s: float = 0.0) -> int:
    """Delete temporary files a crash left behind; returns how many. older_than_s: on a folder
    other live processes write to, leave their writes in flight alone."""
    n = 0
    cutoff = time.time() - older_than_s
    for p in Path(folder).rglob(".incoming-*.part"):
        try:
            if older_than_s and p.stat().st_mtime > cutoff:
                continue
            p.unlink()
        except FileNotFoundError:
            continue
        n += 1
    return n
