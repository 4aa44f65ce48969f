"""Fault tests with real peers and a real node process: refused callers, kill -9 mid-burst,
a destination that is down, a destination that refuses a SOP class, hostile files."""
from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

from tests.support import dicomgen
from tests.support.dcmtk import echoscu, start_storescp, storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port, start_orthanc

pytestmark = pytest.mark.slow

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture(scope="module")
def small_img():
    return dicomgen.isbi_image("160", scale=0.4)


def _files(folder, img, n, *, variant="plain", study_uid=None):
    study_uid = study_uid or generate_uid()
    return [dicomgen.save(dicomgen.ceph_variant(img, variant, study_uid=study_uid), folder / f"{i:03d}.dcm")
            for i in range(n)]


def _count(db, sql) -> int:
    """Read the node's database from outside (WAL allows a concurrent reader)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_wrong_calling_ae_and_wrong_host_are_refused(tmp_path, pack, small_img):
    node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                     allowed_callers=[{"ae_title": "MODALITY", "hosts": ["127.0.0.1"]},
                                      {"ae_title": "PINNED", "hosts": ["10.9.9.9"]}])
    with node:
        node.start(calling_ae="MODALITY")
        files = _files(tmp_path / "in", small_img, 1)
        wrong_ae = storescu(files, node.port, called_ae="CEPHNODE", calling_ae="INTRUDER")
        wrong_host = storescu(files, node.port, called_ae="CEPHNODE", calling_ae="PINNED")
        wrong_called = storescu(files, node.port, called_ae="SOMEONE", calling_ae="MODALITY")
        for res in (wrong_ae, wrong_host, wrong_called):
            assert res.returncode != 0 and "Association Rejected" in res.stderr, res.stderr
        assert echoscu(node.port, called_ae="CEPHNODE", calling_ae="INTRUDER").returncode != 0
        assert echoscu(node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        ok = storescu(files, node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
        assert ok.returncode == 0, ok.stderr
        status = node.wait_for(lambda s: s["instances"]["received"] == 1, what="the allowed instance")
        assert status["instances"]["received"] == 1
        rejected = [e for e in node.log_events() if e.get("event") == "association_rejected"]
        reasons = " | ".join(e["reason"] for e in rejected)
        assert "'INTRUDER' is not allowed" in reasons and "'PINNED' is not allowed from 127.0.0.1" in reasons


def test_kill9_mid_burst_then_restart_loses_and_doubles_nothing(tmp_path, pack):
    # large 16-bit images (1936 x 2400, 9 MB each) so that the burst lasts long enough to be
    # cut even on a loaded machine
    img = dicomgen.isbi_image("170", scale=2.0)
    n = 10
    files = _files(tmp_path / "in", img, n, variant="window16")
    with start_orthanc(tmp_path / "pacs") as pacs:
        node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                         allowed_callers=[{"ae_title": "MODALITY"}],
                         destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                        "port": pacs.dicom_port, "kinds": ["sr"]}],
                         extra={"processing": {"outbox_kinds": ["sr"]}})
        with node:
            node.start(calling_ae="MODALITY")
            db = node.db_path
            burst = subprocess.Popen(["storescu", "-nh", "-aet", "MODALITY", "-aec", "CEPHNODE", "127.0.0.1",
                                      str(node.port), *map(str, files)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            while _count(db, "SELECT COUNT(*) FROM instances") < 2 and burst.poll() is None:
                time.sleep(0.005)
            node.kill9()
            received_before_kill = _count(db, "SELECT COUNT(*) FROM instances")
            burst.wait(timeout=120)
            assert 1 <= received_before_kill < n, "the kill must land mid-burst"

            # the modality sends its failed batch again (all of it, as storescu would)
            node.start(calling_ae="MODALITY")
            again = storescu(files, node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
            assert again.returncode == 0, again.stderr
            # second kill -9, this time while jobs are being processed
            # (a job must be in a worker at that moment: under load the study may still be open)
            while (_count(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'delivering')") < 2
                   or _count(db, "SELECT COUNT(*) FROM jobs WHERE state='processing'") < 1):
                assert node.alive(), node.log_tail()
                assert _count(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'delivering')") < n, \
                    "every job was processed before the second kill could land"
                time.sleep(0.02)
            node.kill9()
            done_at_kill = _count(db, "SELECT COUNT(*) FROM jobs WHERE state='done'")
            assert done_at_kill < n, "the second kill must land mid-processing"

            node.start(calling_ae="MODALITY")
            status = node.wait_for(lambda s: s["jobs"].get("done", 0) == n and s["queue_depth"] == 0,
                                   what="every job done after restarts")
            assert status["instances"]["received"] == n, status                    # nothing lost
            assert status["instances"]["duplicates"] >= received_before_kill, status  # resent ones recognised
            assert status["jobs"] == {"done": n}, status                           # one job each, nothing doubled
            assert status["deliveries"] == {"done": n}, status
            pacs.wait_for_instances(n)
            time.sleep(1.0)  # let any stray duplicate arrive before counting
            srs = pacs.instances()
            assert len(srs) == n and {pacs.instance_tags(i)["Modality"] for i in srs} == {"SR"}
            recovered = [e for e in node.log_events() if e.get("event") == "recovered"]
            assert len(recovered) == 3 and recovered[-1]["requeued_jobs"] >= 1, recovered


def test_destination_down_then_back_everything_delivered_across_a_restart(tmp_path, pack, small_img):
    pacs_port = free_port()  # nothing listens here yet
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, allowed_callers=[{"ae_title": "MODALITY"}],
                     destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port,
                                    "kinds": ["sr", "gsps"]}],
                     retry={"max_attempts": 100, "initial_delay_s": 0.3, "factor": 2.0, "max_delay_s": 1.0})
    n = 3
    with node:
        node.start(calling_ae="MODALITY")
        sent = storescu(_files(tmp_path / "in", small_img, n), node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
        assert sent.returncode == 0, sent.stderr
        node.wait_for(lambda s: s["queue_depth"] == n and s["deliveries"].get("pending") == 2 * n
                      and _count(node.db_path, "SELECT MIN(attempts) FROM deliveries") >= 2,
                      what="retries while the destination is down")
        assert node.terminate() == 0          # graceful stop while deliveries wait
        attempts_before = _count(node.db_path, "SELECT MIN(attempts) FROM deliveries")
        node.start(calling_ae="MODALITY")     # the retry schedule outlives the restart
        node.wait_for(lambda s: _count(node.db_path, "SELECT MIN(attempts) FROM deliveries") > attempts_before,
                      what="retries resumed after restart")
        with start_orthanc(tmp_path / "pacs", dicom_port=pacs_port) as pacs:
            status = node.wait_for(lambda s: s["jobs"].get("done", 0) == n, what="delivery once the archive is back")
            assert status["deliveries"] == {"done": 2 * n}
            pacs.wait_for_instances(2 * n)
            assert sorted(pacs.instance_tags(i)["Modality"] for i in pacs.instances()) == ["PR"] * n + ["SR"] * n
    assert any(e.get("event") == "delivery_retry_scheduled" and "unreachable" in e.get("error", "")
               for e in node.log_events())


def test_last_retry_parks_the_job_visibly_and_retry_command_delivers(tmp_path, pack, small_img):
    pacs_port = free_port()
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, allowed_callers=[{"ae_title": "MODALITY"}],
                     destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port,
                                    "kinds": ["sr"]}],
                     retry={"max_attempts": 2, "initial_delay_s": 0.2, "factor": 2.0, "max_delay_s": 1.0})
    with node:
        node.start(calling_ae="MODALITY")
        storescu(_files(tmp_path / "in", small_img, 1), node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
        status = node.wait_for(lambda s: s["jobs"].get("failed") == 1, what="the job parked as failed")
        failed = status["failed_jobs"][0]
        assert "delivery failed" in failed["error"] and "unreachable" in failed["error"]
        text = node.cli("status")
        assert text.returncode == 0 and "FAILED jobs (1" in text.stdout and failed["sop_uid"] in text.stdout
        assert f"pacs (ORTHANC@127.0.0.1:{pacs_port}): 0 done, 0 pending, 1 failed" in text.stdout, text.stdout
        assert status["destinations"]["pacs"]["last_error"].endswith("is unreachable or aborted the association")
        with start_orthanc(tmp_path / "pacs", dicom_port=pacs_port) as pacs:
            res = node.cli("retry", "--failed")
            assert res.returncode == 0 and f"#{failed['id']}" in res.stdout
            node.wait_for(lambda s: s["jobs"] == {"done": 1}, what="delivery after `cephnode retry --failed`")
            assert len(pacs.wait_for_instances(1)) == 1


def test_destination_refusing_a_sop_class_is_reported_clearly(tmp_path, pack, small_img):
    with start_storescp(tmp_path / "archive", ae_title="GSPSONLY", accept_only=[GSPS]) as archive:
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, allowed_callers=[{"ae_title": "MODALITY"}],
                         destinations=[{"name": "viewer", "ae_title": "GSPSONLY", "host": "127.0.0.1",
                                        "port": archive.port, "kinds": ["sr", "gsps"]}])
        with node:
            node.start(calling_ae="MODALITY")
            storescu(_files(tmp_path / "in", small_img, 1), node.port, called_ae="CEPHNODE", calling_ae="MODALITY")
            status = node.wait_for(lambda s: s["jobs"].get("failed") == 1, what="the refusal")
            error = status["failed_jobs"][0]["error"]
            assert "rejected SOP class Comprehensive SR Storage (1.2.840.10008.5.1.4.1.1.88.33)" in error
            assert status["deliveries"] == {"done": 1, "failed": 1}   # the GSPS went through
            assert len(archive.wait_for_files(1)) == 1
            sr_delivery = _count(node.db_path, "SELECT attempts FROM deliveries WHERE state='failed'")
            assert sr_delivery == 1   # a permanent refusal is not retried


def test_hostile_files_fail_their_jobs_and_the_node_goes_on(tmp_path, pack, small_img):
    hostile = dicomgen.hostile_files(tmp_path / "hostile", small_img)
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, allowed_callers=[{"ae_title": "MODALITY"}],
                     extra={"selection": {"min_rows": 64, "min_columns": 64}})
    with node:
        node.start(calling_ae="MODALITY")
        # pynetdicom as a raw sender: it sends each file's bytes as they are, without decoding
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            ae = AE(ae_title="MODALITY")
            import pydicom

            for path in hostile.values():
                ts = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID
                ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ts])
            answers = {}
            for name, path in hostile.items():
                assoc = ae.associate("127.0.0.1", node.port, ae_title="CEPHNODE")
                assert assoc.is_established, name
                status = assoc.send_c_store(path)
                answers[name] = getattr(status, "Status", None)
                assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert node.alive()
        assert all(code == 0x0000 for code in answers.values()), answers  # acknowledged and kept
        good = storescu(_files(tmp_path / "good", small_img, 1), node.port, called_ae="CEPHNODE",
                        calling_ae="MODALITY")
        assert good.returncode == 0, good.stderr
        status = node.wait_for(lambda s: s["queue_depth"] == 0 and s["open_studies"] == 0
                               and s["jobs"].get("done") == 1, what="every job settled")
        assert status["instances"]["received"] == len(hostile) + 1
        errors = {j["sop_uid"]: j["error"] for j in status["failed_jobs"]}
        expected = {"truncated_pixels": "cannot be decoded", "huge_dimensions": "implausible image size",
                    "no_pixel_data": "no Pixel Data", "multi_frame": "multi-frame", "colour": "not greyscale",
                    "undecodable_syntax": "cannot be decoded here"}
        from cephnode.node.jobstore import JobStore

        instances = {r["path"].rsplit("/", 1)[-1]: r for r in JobStore(node.db_path).instances()}
        for name, path in hostile.items():
            sop = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.MediaStorageSOPInstanceUID)
            row = instances[f"{sop}.dcm"]
            assert (node.db_path.parent / "spool").exists() and row["path"], name   # kept in the spool
            if name in expected:
                assert expected[name] in (errors.get(sop) or ""), (name, errors.get(sop))
            else:  # unreadable beyond repair: a failed job or a skip, each with its reason
                assert errors.get(sop) or (not row["selected"] and row["reason"]), (name, row)
        assert echoscu(node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        assert node.alive()


def test_parallel_associations_are_all_spooled(tmp_path, pack, small_img):
    """Four modalities at once: concurrent C-STOREs share one SQLite file and one spool."""
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=3600,
                     allowed_callers=[{"ae_title": f"MOD{i}"} for i in range(4)])
    with node:
        node.start(calling_ae="MOD0")
        batches = [_files(tmp_path / f"in{i}", small_img, 8) for i in range(4)]
        procs = [subprocess.Popen(["storescu", "-aet", f"MOD{i}", "-aec", "CEPHNODE", "127.0.0.1", str(node.port),
                                   *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, files in enumerate(batches)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        status = node.status()
        assert status["instances"] == {"received": 32, "selected": 32, "skipped": 0, "duplicates": 0,
                                      "pruned": 0}
        assert status["open_studies"] == 4 and status["queue_depth"] == 0   # waiting for the quiet period
        spooled = sorted((node.db_path.parent / "spool").rglob("*.dcm"))
        assert len(spooled) == 32


def test_retention_prunes_finished_work_when_the_node_starts(tmp_path, pack, small_img):
    """A real node with a retention of ~1 s: a skipped (PA) instance is spooled, then deleted by
    the retention pass the next start runs; its row stays, so a resend is still a duplicate."""
    node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                     quiet_period_s=3600, extra={"storage": {"retention_days": 1.0 / 86400}})
    pa = dicomgen.make_dx(small_img, series_description="PA CEPH")
    pa.ViewPosition = "PA"
    path = dicomgen.save(pa, tmp_path / "pa.dcm")
    with node:
        node.start()
        assert storescu([path], node.port, called_ae="CEPHNODE").returncode == 0
        spooled = list((node.db_path.parent / "spool").rglob("*.dcm"))
        assert len(spooled) == 1
        assert node.terminate() == 0
        time.sleep(1.5)
        node.start()
        status = node.wait_for(lambda s: s["instances"]["pruned"] == 1, timeout=60, what="retention pass")
        assert status["instances"]["skipped"] == 1 and not spooled[0].exists()
        assert any(e.get("event") == "retention_pruned" and e.get("instances") == 1 for e in node.log_events())
        assert storescu([path], node.port, called_ae="CEPHNODE").returncode == 0
        assert node.status()["instances"]["duplicates"] == 1
