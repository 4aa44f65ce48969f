"""Worker processes isolate the unsafe part of a job: a real hang, a segfault, a panic (a
BaseException), a memory blow-up and a sudden exit happen inside the worker process of a
real node (test-only fault hooks, CEPHNODE_FAULT_INJECTION=1), and each fails only its
own job with a stated reason while the node keeps receiving and processing."""
from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import echoscu, storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_img():
    return dicomgen.isbi_image("160", scale=0.4)


def _fault_file(folder, img, fault: str | None, name: str):
    ds = dicomgen.ceph_variant(img, "plain", study_uid=generate_uid())
    if fault:
        ds.ImageComments = f"CEPHNODE-FAULT:{fault}"
    return dicomgen.save(ds, folder / f"{name}.dcm")


def test_hang_crash_panic_and_memory_blowup_fail_only_their_jobs(tmp_path, pack, small_img):
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.2,
                     allowed_callers=[{"ae_title": "MODALITY"}],
                     extra={"selection": {"min_rows": 64, "min_columns": 64},
                            "processing": {"job_timeout_s": 8.0, "max_processing_attempts": 2,
                                           "worker_memory_mb": 512}})
    node.env["CEPHNODE_FAULT_INJECTION"] = "1"
    with node:
        node.start(calling_ae="MODALITY")
        faults = ["hang", "segfault", "panic", "oom", "exit"]
        files = {f: _fault_file(tmp_path / "in", small_img, f, f) for f in faults}
        files["good"] = _fault_file(tmp_path / "in", small_img, None, "good")
        for name, path in files.items():
            res = storescu([path], node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
            assert res.returncode == 0, (name, res.stderr)
        status = node.wait_for(lambda s: s["queue_depth"] == 0 and s["open_studies"] == 0
                               and sum(s["jobs"].values()) == len(files), timeout=240, what="all jobs settled")
        import pydicom

        names = {str(pydicom.dcmread(p).SOPInstanceUID): n for n, p in files.items()}
        assert status["jobs"] == {"done": 1, "failed": len(faults)}, \
            (status["jobs"], {names.get(j["sop_uid"]): j["error"] for j in status["failed_jobs"]})

        by_sop = {j["sop_uid"]: j for j in status["failed_jobs"]}
        reasons = {f: by_sop[str(pydicom.dcmread(files[f]).SOPInstanceUID)]["error"] for f in faults}
        assert "timed out after 8 s (attempt 2 of 2; parked)" in reasons["hang"], reasons
        assert "worker process died: SIGSEGV" in reasons["segfault"], reasons
        assert "unexpected error: InjectedPanic: injected panic" in reasons["panic"], reasons
        assert "out of memory" in reasons["oom"] or "SIGKILL" in reasons["oom"], reasons
        assert "worker process exited with code 3" in reasons["exit"], reasons
        events = node.log_events()
        replaced = [e for e in events if e.get("event") == "worker_replaced"]
        # hang twice, segfault twice, exit twice: each lost process was replaced
        assert len(replaced) >= 6, [e.get("event") for e in events][-40:]
        assert any(e.get("event") == "job_interrupted" and "timed out" in e.get("reason", "") for e in events)
        # the node still serves
        assert echoscu(node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        assert node.alive()
        assert node.terminate() == 0
