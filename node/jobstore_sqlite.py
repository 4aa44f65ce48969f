"""The embedded queue backend: one SQLite file in WAL mode, no server.

Every write transaction is BEGIN IMMEDIATE (the one write lock, taken at once: no upgrade
deadlocks) with synchronous=FULL, so what was committed survives kill -9 or a power cut.
Because SQLite serialises writers, "lock this row" needs no SQL at all: `lock()` is empty.
Each thread gets its own connection (sqlite3 connections must not be shared across threads).

A SQLite file belongs to one serving process (`exclusive`): at its start, every job still
marked processing was interrupted, whatever its lease says.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
    lease_owner TEXT,             -- the process processing it (while state = processing)
    lease_expires_at REAL,        -- renewed while that process lives
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
    lease_owner TEXT,             -- the process sending it right now
    lease_expires_at REAL,
    UNIQUE (job_id, destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
"""

# Columns added since the first release: (table, column, type).
ADDED_COLUMNS = (
    ("instances", "pruned_at", "REAL"),
    ("jobs", "lease_owner", "TEXT"),
    ("jobs", "lease_expires_at", "REAL"),
    ("deliveries", "lease_owner", "TEXT"),
    ("deliveries", "lease_expires_at", "REAL"),
    ("jobs", "not_before", "REAL"),
)


class SqliteBackend:
    name = "sqlite"
    exclusive = True

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._pid = os.getpid()
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction
        self._migrate()

    def describe(self) -> str:
        return str(self.path)

    def _migrate(self) -> None:
        """Bring a queue written by an older version up to this schema (columns added since)."""
        with self.transaction() as db:
            for table, column, sql_type in ADDED_COLUMNS:
                columns = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child: never touch the parent's connections
            self._local, self._pid = threading.local(), os.getpid()
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
    def connection(self) -> Iterator[sqlite3.Connection]:
        """For reads outside a transaction."""
        yield self._conn()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def lock(*, skip_locked: bool = False, of: str | None = None) -> str:
        return ""  # the transaction already holds the database's only write lock

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
