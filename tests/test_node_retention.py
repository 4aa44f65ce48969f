"""Retention: what is deleted after storage.retention_days, and what never is (real files; the
queue on real SQLite and on real PostgreSQL)."""
from __future__ import annotations

import sqlite3
import time

from cephnode.node.jobstore import InstanceRecord, JobStore, PlannedDelivery
from cephnode.node.retention import DAY_S, prune
from tests.support.postgres import queue_target  # noqa: F401 (a fixture)

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _file(path, size=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _receive(store, spool, sop, study, *, selected=True, now=0.0):
    path = _file(spool / study / f"{sop}.dcm")
    store.record_instance(InstanceRecord(sop, DX, study, study + ".1", "1.2.840.10008.1.2.1", str(path), "MOD",
                                         "127.0.0.1", selected, None if selected else "PA view"), now=now)
    return path


def _process(store, outbox, *, deliveries: int):
    """Claim the next job and record one produced object with `deliveries` deliveries of it."""
    job = store.claim_job()
    out = _file(outbox / job.study_uid / job.sop_uid / "sr-9.dcm")
    obj = {"kind": "sr", "sop_uid": "9." + job.sop_uid, "sop_class": "1.2.840.10008.5.1.4.1.1.88.34", "path": str(out)}
    dels = [PlannedDelivery(f"pacs{i}", "PACS", "127.0.0.1", 104, **obj) for i in range(deliveries)]
    store.finish_processing(job.id, [obj], dels, {})
    return job, out


def test_only_finished_work_past_retention_is_pruned(tmp_path, queue_target):
    spool, outbox = tmp_path / "spool", tmp_path / "outbox"
    store = JobStore(queue_target)
    t0 = time.time()
    delivered = _receive(store, spool, "1.1", "10", now=t0)
    failed = _receive(store, spool, "1.2", "10", now=t0)
    local_only = _receive(store, spool, "1.3", "10", now=t0)
    skipped = _receive(store, spool, "1.4", "10", selected=False, now=t0)
    store.close_quiet_studies(0, now=t0 + 1)
    waiting = _receive(store, spool, "2.1", "20", now=t0)        # its study never closed: no job yet

    job, delivered_out = _process(store, outbox, deliveries=1)
    for d in store.claim_deliveries(now=t0 + 10):
        store.delivery_succeeded(d)
    assert store.job(job.id)["state"] == "done"
    job2, failed_out = _process(store, outbox, deliveries=1)
    for d in store.claim_deliveries(now=t0 + 10):
        store.delivery_failed(d, "refused", retry_in_s=None)
    assert store.job(job2.id)["state"] == "failed"
    job3, local_out = _process(store, outbox, deliveries=0)      # no destination: outbox is the only copy
    assert store.job(job3.id)["state"] == "done"

    # Not old enough yet: nothing goes.
    r = prune(store, retention_days=30, spool_dir=spool, outbox_dir=outbox, now=t0 + 29 * DAY_S)
    assert r.instances == 0 and all(p.exists() for p in (delivered, failed, local_only, skipped, waiting))

    r = prune(store, retention_days=30, spool_dir=spool, outbox_dir=outbox, now=t0 + 31 * DAY_S)
    assert r.instances == 3 and r.files == 4 and r.bytes == 400 and r.refused == 0
    assert not delivered.exists() and not delivered_out.exists() and not skipped.exists()
    assert not local_only.exists() and local_out.exists()        # results kept, the received copy gone
    assert failed.exists() and failed_out.exists()               # `cephnode retry` still has its files
    assert waiting.exists()
    assert not delivered_out.parent.exists()                     # emptied per-job folder removed
    assert spool.exists() and outbox.exists()
    assert store.summary()["instances"]["pruned"] == 3
    # a resend of a pruned instance is still a duplicate, never processed twice
    assert not store.record_instance(InstanceRecord("1.1", DX, "10", "10.1", "", str(delivered), "MOD", None,
                                                    True, None))
    # a second pass has nothing left to do
    assert prune(store, retention_days=30, spool_dir=spool, outbox_dir=outbox, now=t0 + 32 * DAY_S).instances == 0


def test_paths_outside_the_spool_and_outbox_are_never_deleted(tmp_path, queue_target):
    spool, outbox = tmp_path / "spool", tmp_path / "outbox"
    store = JobStore(queue_target)
    elsewhere = _file(tmp_path / "elsewhere" / "precious.dcm")
    store.record_instance(InstanceRecord("3.1", DX, "30", "30.1", "", str(elsewhere), "MOD", None, False, "x"), now=0)
    inside = _receive(store, spool, "3.2", "30", selected=False, now=0)
    r = prune(store, retention_days=1, spool_dir=spool, outbox_dir=outbox, now=10 * DAY_S)
    assert r.refused == 1 and r.files == 1 and elsewhere.exists() and not inside.exists()


def test_a_crash_between_deleting_and_marking_is_finished_by_the_next_pass(tmp_path, queue_target):
    spool, outbox = tmp_path / "spool", tmp_path / "outbox"
    store = JobStore(queue_target)
    path = _receive(store, spool, "4.1", "40", selected=False, now=0)
    path.unlink()                                                # deleted, mark never committed
    r = prune(store, retention_days=1, spool_dir=spool, outbox_dir=outbox, now=10 * DAY_S)
    assert r.instances == 1 and r.files == 0
    assert store.instances()[0]["pruned_at"] == 10 * DAY_S


def test_a_queue_from_before_retention_is_migrated_in_place(tmp_path):
    db = tmp_path / "q.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, sop_class TEXT, study_uid TEXT, series_uid TEXT,"
                " transfer_syntax TEXT, path TEXT NOT NULL, calling_ae TEXT, peer_host TEXT, received_at REAL NOT NULL,"
                " receipts INTEGER NOT NULL DEFAULT 1, selected INTEGER NOT NULL, reason TEXT)")
    con.execute("INSERT INTO instances (sop_uid, path, received_at, selected) VALUES ('5.1', '/x', 0, 1)")
    con.commit()
    con.close()
    store = JobStore(db)
    assert store.instances()[0]["pruned_at"] is None and store.has_instance("5.1")
