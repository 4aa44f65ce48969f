"""Retention: delete the files of finished work once it is older than storage.retention_days.

The node is not an archive: the PACS keeps the images and, once delivered, the results. So
after the retention period the spooled instance and the produced objects of a job that is
done (every delivery made) go, as do instances that were never selected for processing.
Failed, parked and unfinished work is never pruned, so `cephnode retry` always has its files;
nor are the results of a job that had nowhere to be sent (the outbox is their only copy).
The database rows stay: a resend of a pruned instance is still recognised as a duplicate.

Files first, then the database mark: a crash in between leaves rows that the next pass
finishes (deleting a missing file is not an error). Only paths inside the spool and outbox
folders are ever deleted, whatever the database says.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cephnode.node.jobstore import JobStore

DAY_S = 86400.0


@dataclass
class PruneResult:
    instances: int = 0
    files: int = 0
    bytes: int = 0
    refused: int = 0          # paths outside the spool/outbox: left alone


def prune(store: JobStore, *, retention_days: float, spool_dir: Path, outbox_dir: Path,
          now: float | None = None, batch: int = 500) -> PruneResult:
    now = time.time() if now is None else now
    cutoff = now - retention_days * DAY_S
    roots = (Path(spool_dir).resolve(), Path(outbox_dir).resolve())
    result = PruneResult()
    while True:
        expired = store.expired(cutoff, limit=batch)
        if not expired:
            return result
        for item in expired:
            for path in [item.path, *item.output_paths]:
                _delete(Path(path), roots, result)
        store.mark_pruned([e.sop_uid for e in expired], now=now)
        result.instances += len(expired)


def _delete(path: Path, roots: tuple[Path, ...], result: PruneResult) -> None:
    path = path.resolve()
    root = next((r for r in roots if path.is_relative_to(r) and path != r), None)
    if root is None:
        result.refused += 1
        return
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return
    result.files += 1
    result.bytes += size
    # Drop the per-study / per-job folders that are now empty, never the root itself.
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop climbing
            break
        folder = folder.parent
