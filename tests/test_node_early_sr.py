"""The SR leaves first (issue 14): the worker writes the SR, the node queues its deliveries at
once and the delivery loop sends it while the SEG and GSPS are still being built. A crash right
after that costs nothing: the job is run again, makes the same objects (derived UIDs), and each
object reaches the archive exactly once."""
from __future__ import annotations

import sqlite3

import pytest
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port, start_orthanc

pytestmark = pytest.mark.slow
KINDS = ["sr", "seg", "gsps"]


def _deliveries(db) -> dict[str, dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in con.execute("SELECT * FROM deliveries ORDER BY id")]
    finally:
        con.close()
    assert len({r["kind"] for r in rows}) == len(rows), rows       # one row per object
    return {r["kind"]: r for r in rows}


def _node(tmp_path, pack, pacs):
    return make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.2,
                     allowed_callers=[{"ae_title": "MODALITY"}],
                     destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                    "port": pacs.dicom_port, "kinds": KINDS}],
                     extra={"selection": {"min_rows": 64, "min_columns": 64},
                            "processing": {"outbox_kinds": KINDS, "max_processing_attempts": 2}})


def test_the_sr_is_queued_before_the_other_objects_are_built(tmp_path, pack):
    img = dicomgen.isbi_image("161", scale=0.5)
    path = dicomgen.save(dicomgen.ceph_variant(img, "plain", study_uid=generate_uid()), tmp_path / "a.dcm")
    with start_orthanc(tmp_path / "pacs") as pacs, _node(tmp_path, pack, pacs) as node:
        node.start(calling_ae="MODALITY")
        assert storescu([path], node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        status = node.wait_for(lambda s: s["jobs"].get("done", 0) == 1, what="the job done")
        assert status["deliveries"] == {"done": 3}, status
        rows = _deliveries(node.db_path)
        # queued when the SR was written, before the SEG and GSPS existed (queued with the job's end)
        assert rows["sr"]["next_attempt_at"] < rows["seg"]["next_attempt_at"] == rows["gsps"]["next_attempt_at"]
        early = [e for e in node.log_events() if e.get("event") == "deliveries_planned_early"]
        assert [(e["kinds"], e["deliveries"], e["planned"]) for e in early] == [(["sr"], 1, True)]
        pacs.wait_for_instances(3)
        assert {pacs.instance_tags(i)["Modality"] for i in pacs.instances()} == {"SR", "SEG", "PR"}


def test_a_crash_after_the_early_sr_resumes_and_sends_each_object_once(tmp_path, pack):
    img = dicomgen.isbi_image("162", scale=0.5)
    ds = dicomgen.ceph_variant(img, "plain", study_uid=generate_uid())
    ds.ImageComments = "CEPHNODE-FAULT:exit-after-sr"      # the worker exits right after the SR went on
    path = dicomgen.save(ds, tmp_path / "a.dcm")
    with start_orthanc(tmp_path / "pacs") as pacs, _node(tmp_path, pack, pacs) as node:
        node.env["CEPHNODE_FAULT_INJECTION"] = "1"
        node.start(calling_ae="MODALITY")
        assert storescu([path], node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        status = node.wait_for(lambda s: s["jobs"].get("done", 0) == 1, what="the job done after the crash")
        assert status["jobs"] == {"done": 1} and status["deliveries"] == {"done": 3}, status
        events = node.log_events()
        interrupted = [e for e in events if e.get("event") == "job_interrupted"]
        assert len(interrupted) == 1 and "exited with code 3" in interrupted[0]["reason"], interrupted
        early = [e for e in events if e.get("event") == "deliveries_planned_early"]
        assert len(early) == 2, early                       # both attempts handed the SR on
        rows = _deliveries(node.db_path)
        assert set(rows) == set(KINDS)
        assert rows["sr"]["attempts"] == 1                  # the SR was sent once, not once per attempt
        con = sqlite3.connect(node.db_path)
        assert con.execute("SELECT attempts FROM jobs").fetchone()[0] == 2
        con.close()
        pacs.wait_for_instances(3)
        modalities = sorted(pacs.instance_tags(i)["Modality"] for i in pacs.instances())
        assert modalities == ["PR", "SEG", "SR"], modalities
