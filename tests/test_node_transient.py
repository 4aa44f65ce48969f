"""Row 9 of the hardening issue: a full disk is a transient condition, not a failed job.

Real full disks: each test mounts a small tmpfs (the test runs as root, as CI does) under the
spool or the outbox of a real node process, fills it, and lets it empty again. The disk
watermark is off here (storage.min_free_mb = 0) so that the write itself meets ENOSPC."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port
from tests.support.scu import c_store

pytestmark = pytest.mark.slow


@contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("mounting a small file system for the full-disk tests needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill the disk up to `leave_bytes` free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.fixture(scope="module")
def ceph():
    return dicomgen.isbi_image("160", scale=0.4)


def test_a_full_spool_answers_out_of_resources_and_receiving_resumes_by_itself(tmp_path, pack, ceph):
    with small_disk(tmp_path / "spooldisk", "4m") as disk:
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.3,
                         extra={"storage": {"spool_dir": str(disk / "spool"), "min_free_mb": 0},
                                "processing": {"outbox_kinds": ["sr"]}})
        files = [dicomgen.save(dicomgen.make_dx(ceph, study_uid=generate_uid()), tmp_path / "send" / f"c{i}.dcm")
                 for i in range(3)]
        with node:
            node.start()
            filler = fill(disk, 16 * 1024)
            for f in files[:2]:                 # two refusals while the disk is full: the sender keeps them
                assert c_store(f, node.port) == 0xA700
            filler.unlink()                    # space comes back: no restart, no retry command
            sent = storescu(files, node.port, called_ae="CEPHNODE")
            assert sent.returncode == 0, sent.stderr
            status = node.wait_for(lambda s: s["jobs"].get("done") == 3, what="all three traced")
            assert status["instances"]["received"] == 3
            events = [e["event"] for e in node.log_events()]
            # said once when it started and once when it ended, not once per refused C-STORE
            assert events.count("receive_paused") == 1 and events.count("receive_resumed") == 1, events


def test_a_full_outbox_defers_the_job_and_it_finishes_when_space_returns(tmp_path, pack, ceph):
    with small_disk(tmp_path / "outboxdisk", "2m") as disk:
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.3,
                         extra={"storage": {"outbox_dir": str(disk / "outbox"), "min_free_mb": 0},
                                "processing": {"outbox_kinds": ["sr", "sc"], "max_processing_attempts": 2}})
        (disk / "outbox").mkdir()
        f = dicomgen.save(dicomgen.make_dx(ceph), tmp_path / "send" / "c.dcm")
        with node:
            node.start()
            filler = fill(disk, 4 * 1024)
            assert storescu([f], node.port, called_ae="CEPHNODE").returncode == 0
            node.wait_for(lambda s: any(e["event"] == "processing_paused" for e in node.log_events()),
                          what="processing paused on the full outbox")
            status = node.status()
            assert status["jobs"].get("failed", 0) == 0 and status["queue_depth"] == 1   # waiting, not failed
            filler.unlink()
            status = node.wait_for(lambda s: s["jobs"].get("done") == 1, timeout=600,
                                   what="the deferred job done without `cephnode retry`")
            events = [e["event"] for e in node.log_events()]
            assert events.count("processing_paused") == 1 and events.count("processing_resumed") == 1, events
