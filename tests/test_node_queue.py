"""The durable queue and the selection rules. Every queue test runs twice: on a real SQLite file
and on a real PostgreSQL database (tests/support/postgres.py starts a throwaway cluster)."""
from __future__ import annotations

import time

import numpy as np

from cephnode.config.schema import SelectionRules
from cephnode.domain.states import JobState
from cephnode.node.jobstore import InstanceRecord, JobStore, PlannedDelivery
from cephnode.node.selection import evaluate
from tests.support import dicomgen
from tests.support.postgres import queue_target  # noqa: F401 (a fixture)

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _rec(sop, study="1.2.3", selected=True, reason=None):
    return InstanceRecord(sop, DX, study, "1.2.3.1", "1.2.840.10008.1.2.1", f"/spool/{sop}.dcm", "MOD",
                          "127.0.0.1", selected, reason)


def test_quiet_period_closes_a_study_and_duplicates_are_not_queued_twice(queue_target):
    store = JobStore(queue_target)
    assert store.record_instance(_rec("1.1"), now=100.0)
    assert store.record_instance(_rec("1.2"), now=101.0)
    assert not store.record_instance(_rec("1.1"), now=101.5)          # duplicate
    assert store.record_instance(_rec("1.3", selected=False, reason="PA view"), now=101.6)
    assert store.close_quiet_studies(5.0, now=105.0) == []            # 4 s since the last one
    assert store.close_quiet_studies(5.0, now=106.5) == [("1.2.3", 2)]
    # a late instance reopens the study; closing again queues only the new one
    store.record_instance(_rec("1.4"), now=107.0)
    assert store.close_quiet_studies(5.0, now=112.0) == [("1.2.3", 1)]
    s = store.summary()
    assert s["instances"] == {"received": 4, "selected": 3, "skipped": 1, "duplicates": 1, "pruned": 0}
    assert s["jobs"] == {"queued": 3} and s["queue_depth"] == 3


def test_interrupted_jobs_resume_and_repeat_offenders_are_parked(queue_target):
    db = queue_target
    store = JobStore(db, lease_s=0.3, auto_renew=False)  # a process that dies does not renew
    for sop in ("2.1", "2.2"):
        store.record_instance(_rec(sop, study="9"), now=0)
    store.close_quiet_studies(0, now=1)
    first = store.claim_job()
    assert first.sop_uid == "2.1" and first.attempts == 1
    # "kill -9": a new store on the same database, as after a restart (on a shared store the
    # lease must have run out first: another live process might still be working on it)
    time.sleep(0.4)
    reopened = JobStore(db, lease_s=0.3, auto_renew=False)
    assert reopened.recover(max_processing_attempts=2) == {"requeued": 1, "parked": 0}
    again = reopened.claim_job()
    assert again.id == first.id and again.attempts == 2
    time.sleep(0.4)
    assert reopened.recover(max_processing_attempts=2) == {"requeued": 0, "parked": 1}
    failed = reopened.job(first.id)
    assert failed["state"] == "failed" and "interrupted 2 times" in failed["error"]
    assert reopened.retry(first.id) == [first.id]
    assert reopened.job(first.id)["state"] == "queued"


def test_delivery_outcomes_settle_the_job(queue_target):
    store = JobStore(queue_target)
    store.record_instance(_rec("3.1", study="7"), now=0)
    store.close_quiet_studies(0, now=1)
    job = store.claim_job()
    objs = [{"kind": k, "sop_uid": f"9.{i}", "sop_class": "1.2", "path": f"/o/{k}.dcm"} for i, k in enumerate(("sr", "gsps"))]
    deliveries = [PlannedDelivery("pacs", "P", "h", 1, **o) for o in objs]
    assert store.finish_processing(job.id, objs, deliveries, {"total_ms": 1.0}) is JobState.DELIVERING
    due = store.claim_deliveries()
    assert len(due) == 2 and store.claim_deliveries() == []      # claimed: no one else takes them
    store.delivery_succeeded(due[0])
    assert store.delivery_failed(due[1], "down", retry_in_s=60) == "delivering"
    assert store.claim_deliveries() == []                     # backoff: not due for 60 s
    assert store.next_delivery_time() > time.time() + 30
    assert store.delivery_failed(due[1], "still down", retry_in_s=None) == "failed"
    job_row = store.job(job.id)
    assert job_row["state"] == "failed" and "pacs gsps: still down" in job_row["error"]
    store.retry(all_failed=True)
    assert store.job(job.id)["state"] == "delivering" and len(store.claim_deliveries()) == 1


def test_default_selection_takes_lateral_cephs_and_skips_the_rest():
    rules = SelectionRules()
    img = np.zeros((300, 300), np.uint8)
    ceph = dicomgen.make_dx(img)
    assert evaluate(ceph, DX, rules).selected
    assert not evaluate(ceph, "1.2.840.10008.5.1.4.1.1.1.3", rules).selected   # intra-oral
    pa = dicomgen.make_dx(img)
    pa.ViewPosition = "PA"
    assert "view position PA" in evaluate(pa, DX, rules).reason
    pano = dicomgen.make_dx(img, series_description="OPG panoramic")
    pano.ViewPosition = ""
    assert "exclusion" in evaluate(pano, DX, rules).reason
    chest = dicomgen.make_dx(img)
    chest.BodyPartExamined = "CHEST"
    assert "body part CHEST" in evaluate(chest, DX, rules).reason
    ct = dicomgen.make_dx(img)
    ct.Modality = "CT"
    assert not evaluate(ct, DX, rules).selected
    thumb = dicomgen.make_dx(img[:100, :100])
    assert "smaller" in evaluate(thumb, DX, rules).reason
    unlabelled = dicomgen.make_dx(img)
    del unlabelled.BodyPartExamined, unlabelled.ViewPosition
    assert evaluate(unlabelled, DX, rules).selected          # many cephalostats leave these empty
    strict = SelectionRules(body_part_missing_ok=False)
    assert evaluate(unlabelled, DX, strict).reason == "body part is missing"
