"""Scale-out on PostgreSQL with real processes and real peers: two receivers and two workers
(`cephnode serve --role receiver|worker`) share a throwaway PostgreSQL cluster and one
spool/outbox folder; a burst of 100 instances is split across both receivers (dcmtk storescu),
each study's instances going to both; one worker is killed with SIGKILL in the middle of a
job, one receiver with SIGKILL in the middle of its burst. Every instance must end with
exactly one SR in a real Orthanc."""
from __future__ import annotations

import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from cephnode.dicom_io.uids import derived_uid
from cephnode.inference.pack import load_pack
from cephnode.node.jobstore import JobStore
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node, test_model_pack
from tests.support.orthanc import free_port, start_orthanc
from tests.support.postgres import shared_cluster

pytestmark = pytest.mark.slow

N_STUDIES, PER_STUDY = 10, 10
LEASE_S = 6.0   # renewed every 2 s; generous, as a loaded CI machine can starve a thread for seconds


def _burst(files, port) -> subprocess.Popen:
    return subprocess.Popen(["storescu", "-nh", "-aet", "MODALITY", "-aec", "CEPHNODE", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(node, name):
    return [e for e in node.log_events() if e.get("event") == name]


def _wait(predicate, what, timeout=240, poll=0.05, alive=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for node in alive:
            assert node.alive(), f"{node.log_path.parent.name} died:\n{node.log_tail()}"
        time.sleep(poll)
    raise TimeoutError(what)


def test_two_receivers_two_workers_survive_sigkill_and_deliver_each_sr_once(tmp_path, tmp_path_factory):
    pack = test_model_pack(tmp_path_factory.mktemp("pack"))
    version = load_pack(pack).version
    url = shared_cluster().new_database()
    small = dicomgen.isbi_image("160", scale=0.3)                 # 290 x 360 8-bit: cheap, still a ceph
    # rx2 gets full-size 16-bit images (2.3 MB each), so that its part of the burst lasts long
    # enough to be cut by the kill even on a busy machine
    large = dicomgen.isbi_image("170", scale=1.0)
    studies = [generate_uid() for _ in range(N_STUDIES)]
    to_rx = {1: [], 2: []}
    for s, study in enumerate(studies):
        for i in range(PER_STUDY):                                 # every study goes to both receivers
            rx = 1 + i % 2
            ds = (dicomgen.ceph_variant(small, "plain", study_uid=study) if rx == 1
                  else dicomgen.ceph_variant(large, "window16", study_uid=study))
            to_rx[rx].append(dicomgen.save(ds, tmp_path / "in" / f"{s:02d}-{i:02d}.dcm"))
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in to_rx[1] + to_rx[2]}
    assert len(sources) == N_STUDIES * PER_STUDY

    shared = tmp_path / "shared"
    with start_orthanc(tmp_path / "pacs") as pacs:
        def node(name, role):
            n = make_node(tmp_path / name, port=free_port(), pack=pack, quiet_period_s=2.0,
                          allowed_callers=[{"ae_title": "MODALITY"}],
                          destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                         "port": pacs.dicom_port, "kinds": ["sr"]}],
                          extra={"storage": {"database": url, "spool_dir": str(shared / "spool"),
                                             "outbox_dir": str(shared / "outbox"), "lease_s": LEASE_S},
                                 "processing": {"outbox_kinds": ["sr"], "workers": 1}})
            n.role = role
            return n

        rx1, rx2 = node("rx1", "receiver"), node("rx2", "receiver")
        w1, w2 = node("w1", "worker"), node("w2", "worker")
        with rx1, rx2, w1, w2:
            for n in (w1, w2):
                n.start(wait=False)
            for n in (rx1, rx2):
                n.start(calling_ae="MODALITY")
            for n in (w1, w2):
                n.wait_for_event("node_started", after_start=1)
            store = JobStore(url)

            # -- the burst, split across both receivers; rx2 is killed in the middle of its part
            burst1, burst2 = _burst(to_rx[1], rx1.port), _burst(to_rx[2], rx2.port)
            _wait(lambda: len(_events(rx2, "instance_received")) >= 3, "rx2 receiving", timeout=60, poll=0.01)
            rx2.kill9()
            received_by_rx2 = len(_events(rx2, "instance_received"))
            assert burst1.wait(120) == 0, burst1.stderr.read()
            assert burst2.wait(120) != 0, "the receiver kill must land mid-burst"
            assert received_by_rx2 < len(to_rx[2])

            # -- worker w1 is killed with SIGKILL while it holds a job
            w1_owner = f":{w1.process.pid}:"

            def w1_busy() -> list[int]:
                return [j["id"] for j in store.jobs() if j["state"] == "processing"
                        and w1_owner in (j["lease_owner"] or "")]

            _wait(lambda: bool(w1_busy()), "w1 processing a job", alive=(w1, w2))
            held = w1_busy()
            w1.kill9()
            assert held and all(store.job(j)["state"] == "processing" for j in held)

            # -- the modality resends rx2's failed batch (all of it); w1 is restarted, as a
            # service manager would; its old claim is only taken back when the lease expires
            rx2.start(calling_ae="MODALITY")
            again = storescu(to_rx[2], rx2.port, called_ae="CEPHNODE", calling_ae="MODALITY")
            assert again.returncode == 0, again.stderr
            w1.start(wait=False)

            def finished() -> bool:
                s = store.summary(recent=0)
                return s["jobs"] == {"done": len(sources)} and s["open_studies"] == 0
            _wait(finished, "every job done", timeout=400, poll=0.5, alive=(rx1, rx2, w2))
            summary = store.summary(recent=0)
            assert summary["instances"]["received"] == len(sources), summary       # nothing lost
            assert summary["instances"]["duplicates"] >= received_by_rx2, summary   # resends recognised
            assert summary["deliveries"] == {"done": len(sources)}, summary        # one SR each, sent once

            # the killed worker's job was taken again by a live process after its lease
            for job_id in held:
                row = store.job(job_id)
                assert row["state"] == "done" and row["attempts"] >= 2, row
            taken_back = _events(w2, "expired_leases_taken_back") + _events(w1, "expired_leases_taken_back")
            assert sum(e["requeued_jobs"] for e in taken_back) >= len(held)
            # both workers did real work
            done_by = {n.log_path.parent.name: len(_events(n, "job_processed")) for n in (w1, w2)}
            assert all(v > 0 for v in done_by.values()), done_by

            # one study per study UID, although its instances came through both receivers
            jobs = store.jobs()
            assert {j["study_uid"] for j in jobs} == set(studies)
            by_rx = [{e["study_uid"] for e in _events(n, "instance_received")} for n in (rx1, rx2)]
            assert by_rx[0] == by_rx[1] == set(studies)

            # Orthanc: exactly one SR per instance, with the derived UID
            pacs.wait_for_instances(len(sources))
            time.sleep(1.5)                                       # let a stray duplicate arrive
            in_pacs = pacs.instances_by_sop_uid()
            assert len(pacs.instances()) == len(sources)
            assert set(in_pacs) == {str(derived_uid(u, version, "sr")) for u in sources}
            for n in (rx1, rx2, w1, w2):
                assert n.terminate() == 0, n.log_tail()
            store.close()
