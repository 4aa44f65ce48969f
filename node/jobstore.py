"""The durable job queue: one SQLite file in WAL mode, no server.

Tables:
  instances   every received instance (kept in the spool until retention prunes it), with the
              selection verdict
  studies     last receipt time per study; a study closes after the quiet period
  jobs        one per qualifying instance: queued -> processing -> delivering -> done | failed
  deliveries  one per (job, destination, output object), with its own retry schedule

Every state change is one transaction with synchronous=FULL, so what was committed survives
kill -9 or a power cut; on start `recover()` puts interrupted work back in the queue.
Each thread gets its own connection (sqlite3 connections must not be shared across threads).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class TEXT,
    study_uid TEXT,
    series_uid TEXT,
    transfer_syntax TEXT,
    path TEXT NOT NULL,
    calling_ae TEXT,
    peer_host TEXT,
    received_at REAL NOT NULL,
    receipts INTEGER NOT NULL DEFAULT 1,
    selected INTEGER NOT NULL,
    reason TEXT,
    pruned_at REAL                -- when retention deleted its files (the row stays: duplicates)
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    last_received_at REAL NOT NULL,
    state TEXT NOT NULL           -- open | closed
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT,
    state TEXT NOT NULL,          -- queued | processing | delivering | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    outputs TEXT,                 -- JSON list of {kind, sop_uid, sop_class, path}
    timings TEXT,                 -- JSON {step: ms}
    not_before REAL               -- a deferred job (transient condition) is not claimed before this
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,    -- a configured destination name, or 'sender'
    ae_title TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,          -- pending | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (job_id, destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
"""

UNFINISHED_JOB_STATES = ("queued", "processing", "delivering")


@dataclass
class InstanceRecord:
    sop_uid: str
    sop_class: str | None
    study_uid: str | None
    series_uid: str | None
    transfer_syntax: str | None
    path: str
    calling_ae: str | None
    peer_host: str | None
    selected: bool
    reason: str | None


@dataclass
class Job:
    id: int
    sop_uid: str
    study_uid: str | None
    state: str
    attempts: int
    error: str | None
    path: str                 # the spooled instance
    calling_ae: str | None
    peer_host: str | None


@dataclass
class Expired:
    """A received instance past retention, and the produced objects that go with it."""
    sop_uid: str
    path: str                 # the spooled instance
    output_paths: list[str]   # empty when the outbox is the results' only copy


@dataclass
class Delivery:
    id: int
    job_id: int
    destination: str
    ae_title: str
    host: str
    port: int
    kind: str
    sop_uid: str
    sop_class: str
    path: str
    attempts: int


class JobStore:
    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction
        self._migrate()

    def _migrate(self) -> None:
        """Bring a queue written by an older version up to this schema (columns added since)."""
        with self._tx() as db:
            columns = {r["name"] for r in db.execute("PRAGMA table_info(instances)")}
            if "pruned_at" not in columns:
                db.execute("ALTER TABLE instances ADD COLUMN pruned_at REAL")
            if "not_before" not in {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}:
                db.execute("ALTER TABLE jobs ADD COLUMN not_before REAL")

    # ---- connections ------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")   # a commit is on disk before we answer Success
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- receiving --------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        return self._conn().execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone() is not None

    def record_instance(self, rec: InstanceRecord, *, now: float | None = None,
                        failed_reason: str | None = None) -> bool:
        """Record a received instance; False if this SOP Instance UID was already known (a
        duplicate: counted, never processed twice). A selected instance reopens its study so
        the quiet period restarts. failed_reason: the instance is kept but cannot be processed
        (e.g. unreadable): a job is created directly in the failed state, visible in status."""
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, sop_class, study_uid, series_uid, transfer_syntax, path,"
                " calling_ae, peer_host, received_at, selected, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rec.sop_uid, rec.sop_class, rec.study_uid, rec.series_uid, rec.transfer_syntax, rec.path,
                 rec.calling_ae, rec.peer_host, now, int(rec.selected), rec.reason))
            if cur.rowcount == 0:
                db.execute("UPDATE instances SET receipts = receipts + 1 WHERE sop_uid=?", (rec.sop_uid,))
                return False
            if failed_reason is not None:
                db.execute(
                    "INSERT INTO jobs (sop_uid, study_uid, state, error, created_at, updated_at, finished_at)"
                    " VALUES (?,?,?,?,?,?,?)", (rec.sop_uid, rec.study_uid, "failed", failed_reason, now, now, now))
            elif rec.selected:
                db.execute(
                    "INSERT INTO studies (study_uid, last_received_at, state) VALUES (?,?, 'open')"
                    " ON CONFLICT(study_uid) DO UPDATE SET last_received_at=excluded.last_received_at, state='open'",
                    (rec.study_uid or "", now))
            return True

    def known_paths(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT path FROM instances")}

    # ---- study completion -------------------------------------------------------------
    def close_quiet_studies(self, quiet_period_s: float, *, now: float | None = None) -> list[tuple[str, int]]:
        """Close every open study without a new instance for quiet_period_s and queue a job for
        each of its qualifying instances that has none yet. Returns (study_uid, jobs queued)."""
        now = time.time() if now is None else now
        closed: list[tuple[str, int]] = []
        with self._tx() as db:
            rows = db.execute("SELECT study_uid FROM studies WHERE state='open' AND last_received_at <= ?",
                              (now - quiet_period_s,)).fetchall()
            for row in rows:
                study = row["study_uid"]
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (sop_uid, study_uid, state, created_at, updated_at)"
                    " SELECT sop_uid, study_uid, 'queued', ?, ? FROM instances"
                    " WHERE COALESCE(study_uid, '') = ? AND selected = 1", (now, now, study))
                db.execute("UPDATE studies SET state='closed' WHERE study_uid=?", (study,))
                closed.append((study, cur.rowcount))
        return closed

    # ---- processing -------------------------------------------------------------------
    def claim_job(self) -> Job | None:
        """Take the oldest queued job (queued -> processing, attempts + 1)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT j.id, j.sop_uid, j.study_uid, j.attempts, i.path, i.calling_ae, i.peer_host FROM jobs j"
                " JOIN instances i ON i.sop_uid = j.sop_uid WHERE j.state='queued' AND COALESCE(j.not_before, 0) <= ?"
                " ORDER BY j.id LIMIT 1", (time.time(),)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='processing', attempts=attempts+1, updated_at=? WHERE id=?",
                       (time.time(), row["id"]))
        return Job(row["id"], row["sop_uid"], row["study_uid"], "processing", row["attempts"] + 1, None,
                   row["path"], row["calling_ae"], row["peer_host"])

    def fail_job(self, job_id: int, error: str, *, timings: dict[str, float] | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='failed', error=?, updated_at=?, finished_at=?,"
                       " timings=COALESCE(?, timings) WHERE id=?",
                       (error, now, now, json.dumps(timings) if timings else None, job_id))

    def requeue_job(self, job_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='queued', error=?, updated_at=? WHERE id=?", (error, time.time(), job_id))

    def defer_job(self, job_id: int, error: str, delay_s: float) -> None:
        """A transient condition of this host (disk full): back to the queue after delay_s, and
        the attempt does not count against max_processing_attempts."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='queued', error=?, attempts=MAX(attempts-1, 0), not_before=?,"
                       " updated_at=? WHERE id=?", (error, now + delay_s, now, job_id))

    def finish_processing(self, job_id: int, outputs: list[dict[str, Any]], deliveries: list[dict[str, Any]],
                          timings: dict[str, float], *, note: str | None = None) -> str:
        """Record the produced objects and queue their deliveries in one transaction.
        Returns the job's new state (delivering, or done when nothing is to be sent)."""
        now = time.time()
        state = "delivering" if deliveries else "done"
        with self._tx() as db:
            for d in deliveries:
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (job_id, destination, ae_title, host, port, kind, sop_uid,"
                    " sop_class, path, state, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?, 'pending', ?)",
                    (job_id, d["destination"], d["ae_title"], d["host"], d["port"], d["kind"], d["sop_uid"],
                     d["sop_class"], d["path"], now))
            db.execute("UPDATE jobs SET state=?, error=?, outputs=?, timings=?, updated_at=?, finished_at=? WHERE id=?",
                       (state, note, json.dumps(outputs), json.dumps(timings), now, now if state == "done" else None,
                        job_id))
        return state

    # ---- delivery ---------------------------------------------------------------------
    def due_deliveries(self, *, now: float | None = None, limit: int = 200) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT * FROM deliveries WHERE state='pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id"
            " LIMIT ?", (now, limit)).fetchall()
        return [Delivery(r["id"], r["job_id"], r["destination"], r["ae_title"], r["host"], r["port"], r["kind"],
                         r["sop_uid"], r["sop_class"], r["path"], r["attempts"]) for r in rows]

    def next_delivery_time(self) -> float | None:
        row = self._conn().execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE state='pending'").fetchone()
        return row[0]

    def delivery_succeeded(self, delivery: Delivery) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state='done', attempts=attempts+1, delivered_at=?, last_error=NULL"
                       " WHERE id=?", (now, delivery.id))
            self._settle_job(db, delivery.job_id, now)

    def delivery_failed(self, delivery: Delivery, error: str, *, retry_in_s: float | None) -> str:
        """retry_in_s None: park as failed now (last attempt, or a permanent refusal)."""
        now = time.time()
        with self._tx() as db:
            if retry_in_s is None:
                db.execute("UPDATE deliveries SET state='failed', attempts=attempts+1, last_error=? WHERE id=?",
                           (error, delivery.id))
            else:
                db.execute("UPDATE deliveries SET attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
                           (error, now + retry_in_s, delivery.id))
            return self._settle_job(db, delivery.job_id, now)

    @staticmethod
    def _settle_job(db: sqlite3.Connection, job_id: int, now: float) -> str:
        counts = {r[0]: r[1] for r in db.execute(
            "SELECT state, COUNT(*) FROM deliveries WHERE job_id=? GROUP BY state", (job_id,))}
        if counts.get("pending"):
            return "delivering"
        if counts.get("failed"):
            errors = [f"{r[0]}: {r[1]}" for r in db.execute(
                "SELECT destination || ' ' || kind, last_error FROM deliveries WHERE job_id=? AND state='failed'",
                (job_id,))]
            db.execute("UPDATE jobs SET state='failed', error=?, updated_at=?, finished_at=? WHERE id=?",
                       ("delivery failed: " + "; ".join(errors), now, now, job_id))
            return "failed"
        db.execute("UPDATE jobs SET state='done', updated_at=?, finished_at=? WHERE id=?", (now, now, job_id))
        return "done"

    # ---- restart and operator commands ------------------------------------------------
    def recover(self, max_processing_attempts: int) -> dict[str, int]:
        """After a crash: jobs caught mid-processing go back to the queue (or are parked as failed
        when they have already crashed the worker max_processing_attempts times)."""
        now = time.time()
        with self._tx() as db:
            parked = db.execute(
                "UPDATE jobs SET state='failed', updated_at=?, finished_at=?, error='processing was interrupted '"
                " || attempts || ' times (crash or kill); parked' WHERE state='processing' AND attempts >= ?",
                (now, now, max_processing_attempts)).rowcount
            requeued = db.execute("UPDATE jobs SET state='queued', updated_at=? WHERE state='processing'",
                                  (now,)).rowcount
        return {"requeued": requeued, "parked": parked}

    def retry(self, job_id: int | None = None, *, all_failed: bool = False) -> list[int]:
        """Give failed jobs another chance: failed deliveries go back to pending (attempts reset);
        a job that failed before producing objects is queued for processing again."""
        now = time.time()
        with self._tx() as db:
            if all_failed:
                ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state='failed'")]
            else:
                row = db.execute("SELECT id, state FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(f"no job {job_id}")
                ids = [row[0]]
            for jid in ids:
                db.execute("UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?, last_error=NULL"
                           " WHERE job_id=? AND state='failed'", (now, jid))
                has_outputs = db.execute("SELECT outputs IS NOT NULL FROM jobs WHERE id=?", (jid,)).fetchone()[0]
                if has_outputs:  # processing succeeded before: only delivery is repeated
                    db.execute("UPDATE jobs SET state='delivering', error=NULL, finished_at=NULL, updated_at=?"
                               " WHERE id=?", (now, jid))
                    self._settle_job(db, jid, now)
                else:
                    db.execute("UPDATE jobs SET state='queued', attempts=0, error=NULL, finished_at=NULL,"
                               " updated_at=? WHERE id=?", (now, jid))
        return ids

    # ---- retention --------------------------------------------------------------------
    def expired(self, cutoff: float, *, limit: int = 500) -> list[Expired]:
        """Instances whose files retention may delete: received before `cutoff`, not pruned yet,
        and either never selected (no job) or whose job is done and finished before `cutoff`.
        Failed, parked, unfinished and still-waiting work is never returned."""
        rows = self._conn().execute(
            "SELECT i.sop_uid, i.path, j.outputs,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.job_id = j.id) AS n_deliveries"
            " FROM instances i LEFT JOIN jobs j ON j.sop_uid = i.sop_uid"
            " WHERE i.pruned_at IS NULL AND i.received_at < ?"
            " AND ((j.id IS NULL AND i.selected = 0) OR (j.state = 'done' AND j.finished_at < ?))"
            " ORDER BY i.received_at LIMIT ?", (cutoff, cutoff, limit)).fetchall()
        out = []
        for r in rows:
            # Without any delivery the outbox holds the only copy of the results: keep them.
            outputs = [o["path"] for o in json.loads(r["outputs"] or "[]")] if r["n_deliveries"] else []
            out.append(Expired(r["sop_uid"], r["path"], outputs))
        return out

    def mark_pruned(self, sop_uids: list[str], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.executemany("UPDATE instances SET pruned_at=? WHERE sop_uid=?", [(now, u) for u in sop_uids])

    # ---- reporting --------------------------------------------------------------------
    def summary(self, *, recent: int = 10) -> dict[str, Any]:
        db = self._conn()
        jobs = {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        deliveries = {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")}
        inst = db.execute("SELECT COUNT(*), COALESCE(SUM(selected), 0), COALESCE(SUM(receipts - 1), 0),"
                          " COUNT(pruned_at) FROM instances").fetchone()
        open_studies = db.execute("SELECT COUNT(*) FROM studies WHERE state='open'").fetchone()[0]

        def job_rows(where: str, limit: int) -> list[dict[str, Any]]:
            return [dict(r) for r in db.execute(
                f"SELECT id, sop_uid, study_uid, state, attempts, error, created_at, finished_at FROM jobs {where}"
                " ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,))]

        per_destination = {}
        for r in db.execute(
                "SELECT destination, ae_title, host, port, SUM(state='pending'), SUM(state='done'), SUM(state='failed'),"
                " MIN(CASE WHEN state='pending' THEN next_attempt_at END), MAX(CASE WHEN state='pending' THEN attempts END)"
                " FROM deliveries GROUP BY destination, ae_title, host, port"):
            last_error = db.execute(
                "SELECT last_error FROM deliveries WHERE destination=? AND state IN ('pending', 'failed')"
                " AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1", (r[0],)).fetchone()
            per_destination[r[0]] = {"address": f"{r[1]}@{r[2]}:{r[3]}", "pending": r[4], "done": r[5],
                                     "failed": r[6], "next_attempt_at": r[7], "max_attempts_so_far": r[8],
                                     "last_error": last_error[0] if last_error else None}
        return {
            "destinations": per_destination,
            "instances": {"received": inst[0], "selected": inst[1], "skipped": inst[0] - inst[1],
                          "duplicates": inst[2], "pruned": inst[3]},
            "open_studies": open_studies,
            "queue_depth": sum(jobs.get(s, 0) for s in UNFINISHED_JOB_STATES),
            "jobs": jobs,
            "deliveries": deliveries,
            "recent_jobs": job_rows("", recent),
            "failed_jobs": job_rows("WHERE state='failed'", 100),   # the newest; the count is in jobs
        }

    def job(self, job_id: int) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return dict(row) if row else None

    def jobs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM jobs ORDER BY id")]

    def deliveries(self, job_id: int | None = None) -> list[dict[str, Any]]:
        if job_id is None:
            rows = self._conn().execute("SELECT * FROM deliveries ORDER BY id")
        else:
            rows = self._conn().execute("SELECT * FROM deliveries WHERE job_id=? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    def instances(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM instances ORDER BY received_at")]
