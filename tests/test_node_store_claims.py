"""Claims, leases and concurrency of the queue, each on real SQLite and on real PostgreSQL.

Several JobStore objects on one database play several node processes: each has its own
owner name and its own connections, as a separate process would."""
from __future__ import annotations

import threading
import time

from cephnode.node.jobstore import InstanceRecord, JobStore, PlannedDelivery
from tests.support.postgres import queue_target  # noqa: F401 (a fixture)

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _rec(sop, study):
    return InstanceRecord(sop, DX, study, study + ".1", "1.2.840.10008.1.2.1", f"/spool/{sop}.dcm", "MOD",
                          "127.0.0.1", True, None)


def _queue(store, n, *, study="1.9"):
    for i in range(n):
        store.record_instance(_rec(f"{study}.{i}", study), now=0)
    assert store.close_quiet_studies(0, now=1) == [(study, n)]


def _outputs(job, destinations=("pacs",)):
    objs = [{"kind": "sr", "sop_uid": "2.25." + job.sop_uid.replace(".", ""), "sop_class": "1.2", "path": "/o/sr.dcm"}]
    return objs, [PlannedDelivery(d, "P", "h", 1, **o) for o in objs for d in destinations]


def _run_threads(targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


def test_concurrent_workers_never_claim_the_same_job(queue_target):
    _queue(JobStore(queue_target), 30)
    taken: list[list[int]] = [[], [], []]

    def worker(k):
        def run():
            store = JobStore(queue_target)
            while (job := store.claim_job()) is not None:
                taken[k].append(job.id)
                objs, dels = _outputs(job)
                assert store.finish_processing(job.id, objs, dels, {"total_ms": 1}) == "delivering"
            store.close()
        return run

    _run_threads([worker(k) for k in range(3)])
    ids = [i for t in taken for i in t]
    assert len(ids) == 30 and len(set(ids)) == 30                 # every job once, none twice
    summary = JobStore(queue_target).summary()
    assert summary["jobs"] == {"delivering": 30} and summary["deliveries"] == {"pending": 30}


def test_two_deliverers_settle_every_job_exactly_once(queue_target):
    """Two destinations per job, so the two deliveries of one job are often settled by two
    processes at the same moment: each must see the other's outcome (the job row lock)."""
    store = JobStore(queue_target)
    _queue(store, 20)
    while (job := store.claim_job()) is not None:
        objs, dels = _outputs(job, destinations=("pacs", "viewer"))
        store.finish_processing(job.id, objs, dels, {})
    sent: list[list[int]] = [[], []]

    def deliverer(k):
        def run():
            own = JobStore(queue_target)
            while batch := own.claim_deliveries(limit=1):
                for d in batch:
                    sent[k].append(d.id)
                    own.delivery_succeeded(d)
            own.close()
        return run

    _run_threads([deliverer(0), deliverer(1)])
    ids = sent[0] + sent[1]
    assert len(ids) == 40 and len(set(ids)) == 40
    summary = JobStore(queue_target).summary()
    assert summary["jobs"] == {"done": 20}, summary["jobs"]
    assert summary["deliveries"] == {"done": 40}


def test_a_dead_workers_job_is_taken_again_when_its_lease_expires(queue_target):
    _queue(JobStore(queue_target), 1)
    dead = JobStore(queue_target, lease_s=0.5, auto_renew=False)    # will "die": never renews
    other = JobStore(queue_target, lease_s=0.5)
    job = dead.claim_job()
    assert job.attempts == 1
    assert other.claim_job() is None                                # held
    assert other.reap_expired() == {"requeued": 0, "parked": 0}     # lease still running
    assert other.summary()["processing_by"] == {dead.owner: 1}
    time.sleep(0.7)
    assert other.reap_expired() == {"requeued": 1, "parked": 0}
    again = other.claim_job()
    assert again.id == job.id and again.attempts == 2
    # the "dead" worker was only stalled and finishes late: its result must not count twice
    objs, dels = _outputs(job)
    assert dead.finish_processing(job.id, objs, dels, {}) == "processing"
    assert not dead.fail_job(job.id, "late failure")
    assert other.finish_processing(again.id, objs, dels, {}) == "delivering"
    assert len(other.deliveries()) == 1
    other.close()


def test_a_live_workers_lease_is_renewed_and_never_taken(queue_target):
    _queue(JobStore(queue_target), 1)
    alive = JobStore(queue_target, lease_s=0.6)                     # renews every 0.2 s
    other = JobStore(queue_target, lease_s=0.6)
    job = alive.claim_job()
    time.sleep(2.0)                                                 # > 3 leases
    assert other.reap_expired() == {"requeued": 0, "parked": 0}
    assert other.job(job.id)["state"] == "processing" and other.job(job.id)["lease_owner"] == alive.owner
    assert other.job(job.id)["lease_expires_at"] > time.time()
    alive.close()


def test_a_job_whose_workers_keep_dying_is_parked(queue_target):
    _queue(JobStore(queue_target), 1)
    for attempt in (1, 2):
        dead = JobStore(queue_target, lease_s=0.2, auto_renew=False, max_processing_attempts=2)
        assert dead.claim_job().attempts == attempt
        time.sleep(0.3)
        reaper = JobStore(queue_target, max_processing_attempts=2)
        expected = {"requeued": 1, "parked": 0} if attempt == 1 else {"requeued": 0, "parked": 1}
        assert reaper.reap_expired() == expected
    [row] = JobStore(queue_target).jobs()
    assert row["state"] == "failed" and "interrupted 2 times" in row["error"]


def test_a_dead_deliverers_deliveries_are_claimed_again_after_the_lease(queue_target):
    store = JobStore(queue_target)
    _queue(store, 2)
    while (job := store.claim_job()) is not None:
        store.finish_processing(job.id, *_outputs(job), {})
    dead = JobStore(queue_target, lease_s=0.5, auto_renew=False)
    other = JobStore(queue_target, lease_s=0.5)
    held = dead.claim_deliveries()
    assert len(held) == 2 and other.claim_deliveries() == []
    assert other.next_delivery_time() > time.time()                 # not before the lease ends
    time.sleep(0.7)
    again = other.claim_deliveries()
    assert sorted(d.id for d in again) == sorted(d.id for d in held)
    for d in again:
        other.delivery_succeeded(d)
    dead.delivery_succeeded(held[0])                                # a late duplicate outcome changes nothing
    dead.delivery_failed(held[1], "late", retry_in_s=None)
    rows = other.deliveries()
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert {j["state"] for j in other.jobs()} == {"done"}
    other.close()


def test_instances_of_one_study_at_two_receivers_make_one_study(queue_target):
    a, b = JobStore(queue_target), JobStore(queue_target)
    assert a.record_instance(_rec("5.1", "5"), now=100.0)
    assert b.record_instance(_rec("5.2", "5"), now=103.0)           # the other receiver, later
    assert not b.record_instance(_rec("5.1", "5"), now=103.5)       # the same instance sent to both
    assert a.close_quiet_studies(5.0, now=107.0) == []              # quiet since 103, not since 100
    # both receivers run a scheduler: the study is closed once, with both instances
    results: list = []
    _run_threads([lambda: results.append(a.close_quiet_studies(5.0, now=109.0)),
                  lambda: results.append(b.close_quiet_studies(5.0, now=109.0))])
    assert sorted(results, key=len) == [[], [("5", 2)]]
    assert len(a.jobs()) == 2 and a.summary()["instances"]["duplicates"] == 1
