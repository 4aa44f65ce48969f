"""A real, throwaway PostgreSQL cluster for tests (Debian's `postgresql` package, installed by
./dev test): initdb into a temporary folder, pg_ctl start on a free loopback port, no Unix
socket and no system service; stopped and deleted at the end of the test session.

initdb refuses to run as root (a cluster owned by root is a security hole), so when the tests
run as root the server runs as the unprivileged `nobody` (subprocess user=/group=, no su or
sudo needed) in a folder handed to that user.

Usage:
    cluster = shared_cluster()          # one per test session, started on first use
    url = cluster.new_database()        # postgresql://... of a fresh, empty database
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.orthanc import free_port

SUPERUSER = "cephnode"


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not candidates:
        raise FileNotFoundError(f"{name} not found: install Debian's postgresql (./dev test does)")
    return candidates[-1]


@dataclass
class PgCluster:
    root: Path
    port: int
    run_as: tuple[int, int] | None      # (uid, gid) when started as root
    log_path: Path
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
                             env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
                             **kwargs)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                               f"{self.log_path.read_text(errors='replace') if self.log_path.exists() else ''}")
        return res

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        with self._lock:
            self._counter += 1
            name = f"t{os.getpid()}_{self._counter}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> PgCluster:
    """durable=False turns fsync off: the tests kill node processes, never the database, and
    a loaded CI machine should not spend its time flushing a throwaway cluster."""
    root = Path(tempfile.mkdtemp(prefix="cephnode-pg-"))
    run_as = None
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        run_as = (nobody.pw_uid, nobody.pw_gid)
        os.chown(root, *run_as)
    root.chmod(0o700)
    cluster = PgCluster(root, free_port(), run_as, root / "server.log")
    cluster._run(pg_bin("initdb"), "-D", str(cluster.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                 "--no-sync", "--locale=C.UTF-8")
    options = [f"-p {cluster.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''",
               "-c max_connections=200"]
    if not durable:
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    cluster._run(pg_bin("pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.log_path), "-o", " ".join(options),
                 "-w", "-t", "60", "start")
    deadline = time.monotonic() + 30
    import psycopg

    while True:  # pg_ctl -w already waited; make sure TCP answers too
        try:
            psycopg.connect(cluster.url(), connect_timeout=5).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.2)
    return cluster


_shared: PgCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> PgCluster:
    """One cluster for the whole test session, started on first use and removed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_cluster()
            atexit.register(_shared.stop)
        return _shared


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_target(request, tmp_path):
    """Where a test's queue lives: a SQLite file, or a fresh database on a real PostgreSQL. The
    queue and retention tests take this fixture, so the same suite runs against both stores."""
    if request.param == "sqlite":
        return tmp_path / "q.sqlite"
    return shared_cluster().new_database()
