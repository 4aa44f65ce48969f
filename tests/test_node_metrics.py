"""The admin HTTP endpoint of a real `cephnode serve` process after real C-STOREs: /metrics
parsed with prometheus_client's own parser must count exactly what was sent, delivered and
parked; /healthz and /readyz; the disk watermark refuses C-STOREs with A700; the token."""
from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import start_storescp, storescu
from tests.support.nodeproc import REPO_ROOT, make_node
from tests.support.orthanc import free_port
from tests.support.scu import c_store

pytestmark = pytest.mark.slow

KINDS = ["sr", "seg", "gsps"]


@pytest.fixture(scope="module")
def img():
    return dicomgen.isbi_image("151", scale=0.3)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(node, headers=None) -> dict[tuple[str, tuple], float]:
    """Every sample as (name, sorted labels) -> value."""
    code, text = get(node.http_url + "/metrics", headers)
    assert code == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, metric, /, **labels) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_metrics_count_what_was_sent_delivered_and_parked(tmp_path, pack, img):
    down_port = free_port()   # nothing listens there: every delivery to it is retried, then parked
    with start_storescp(tmp_path / "archive", ae_title="ARCHIVE") as archive:
        node = make_node(
            tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5,
            destinations=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port,
                           "kinds": KINDS},
                          {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": down_port,
                           "kinds": ["sr"]}],
            retry={"max_attempts": 2, "initial_delay_s": 0.2, "factor": 1.0, "max_delay_s": 0.2})
        with node:
            node.start()
            code, body = get(node.http_url + "/healthz")
            assert (code, body) == (200, "ok\n")
            study = generate_uid()
            cephs = [dicomgen.save(dicomgen.make_dx(img, study_uid=study), tmp_path / "send" / f"c{i}.dcm")
                     for i in range(3)]
            pa = dicomgen.make_dx(img, study_uid=study, series_description="PA CEPH")
            pa.ViewPosition = "PA"
            skipped = dicomgen.save(pa, tmp_path / "send" / "pa.dcm")
            sent = storescu([*cephs, skipped, cephs[0]], node.port, called_ae="CEPHNODE")   # cephs[0] twice
            assert sent.returncode == 0, sent.stderr
            unusable = dicomgen.hostile_files(tmp_path / "hostile", img)["undecodable_syntax"]
            assert c_store(unusable, node.port) == 0x0000
            status = node.wait_for(lambda s: s["queue_depth"] == 0 and s["jobs"].get("failed") == 4,
                                   what="jobs settled (3 parked on 'down', 1 unusable)")
            archive.wait_for_files(3 * len(KINDS))
            m = scrape(node)

            assert value(m, "cephnode_instances_received_total") == 5
            assert value(m, "cephnode_instances_duplicate_total") == 1
            assert value(m, "cephnode_instances_skipped_total") == 1
            assert value(m, "cephnode_instances_unusable_total") == 1
            assert value(m, "cephnode_stores_refused_total", reason="disk_low") == 0
            # 3 traced jobs end failed because 'down' parked their SR; 1 unusable on arrival
            assert value(m, "cephnode_jobs_total", outcome="failed") == 4
            assert value(m, "cephnode_jobs_total", outcome="done") == 0
            assert value(m, "cephnode_deliveries_total", destination="archive", outcome="delivered") == 9
            assert value(m, "cephnode_deliveries_total", destination="down", outcome="retry") == 3
            assert value(m, "cephnode_deliveries_total", destination="down", outcome="parked") == 3
            assert value(m, "cephnode_deliveries_parked", destination="down") == 3
            assert value(m, "cephnode_deliveries_pending", destination="archive") == 0
            assert value(m, "cephnode_queue_depth") == 0
            assert value(m, "cephnode_queue_oldest_pending_age_seconds") == 0
            assert value(m, "cephnode_jobs_in_state", state="failed") == 4
            # phase histograms: one observation per traced job, summing to the timings it recorded
            from cephnode.node.jobstore import JobStore

            timings = [json.loads(j["timings"]) for j in JobStore(node.db_path).jobs() if j["outputs"]]
            assert len(timings) == 3
            for phase in ("read", "decode", "inference", "outputs"):
                assert value(m, "cephnode_job_phase_seconds_count", phase=phase) == 3
                assert value(m, "cephnode_job_phase_seconds_sum", phase=phase) == pytest.approx(
                    sum(t[f"{phase}_ms"] for t in timings) / 1000, abs=1e-6)
            assert value(m, "cephnode_job_phase_seconds_count", phase="delivery") == 9
            # bytes on disk: what the node wrote, file by file
            data = Path(node.config["storage"]["data_dir"])
            for folder in ("spool", "outbox"):
                on_disk = sum(p.stat().st_size for p in (data / folder).rglob("*") if p.is_file())
                assert on_disk > 0 and value(m, f"cephnode_{folder}_bytes") == on_disk
            from cephnode.inference.pack import load_pack

            manifest = load_pack(pack)
            assert value(m, "cephnode_pack_info", name=manifest.name, version=manifest.version) == 1
            assert value(m, "cephnode_inference_device_info", device="cpu", provider="CPUExecutionProvider") == 1
            assert value(m, "cephnode_disk_low") == 0 and value(m, "cephnode_ready") == 1
            # every metric the shipped Grafana dashboard charts exists
            dashboard = json.loads((REPO_ROOT / "deploy" / "grafana-dashboard.json").read_text())
            charted = {n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"cephnode_\w+", t["expr"])}
            scraped = {name for name, _ in m}
            assert charted and charted <= scraped, charted - scraped
            code, body = get(node.http_url + "/readyz")
            assert code == 200 and json.loads(body)["ready"] is True
            assert status["instances"]["duplicates"] == 1
            # the same numbers after a restart for what lives in the database
            assert node.terminate() == 0
            node.start()
            m = scrape(node)
            assert value(m, "cephnode_deliveries_parked", destination="down") == 3
            assert value(m, "cephnode_instances_received_total") == 0     # counters restart, as Prometheus expects


def test_below_the_disk_watermark_stores_are_refused_with_out_of_resources(tmp_path, pack, img):
    node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                     extra={"storage": {"min_free_mb": 1e12}})   # an exabyte free: never
    with node:
        node.start()
        path = dicomgen.save(dicomgen.make_dx(img), tmp_path / "send" / "c.dcm")
        assert c_store(path, node.port) == 0xA700            # out of resources: the sender retries later
        m = scrape(node)
        assert value(m, "cephnode_stores_refused_total", reason="disk_low") == 1
        assert value(m, "cephnode_instances_received_total") == 0
        assert value(m, "cephnode_disk_low") == 1 and value(m, "cephnode_ready") == 0
        assert value(m, "cephnode_disk_watermark_bytes") == 1e12 * 1024 * 1024
        code, body = get(node.http_url + "/readyz")
        assert code == 503 and json.loads(body)["checks"]["disk_above_watermark"] is False
        spool = Path(node.config["storage"]["data_dir"]) / "spool"
        assert not any(p.is_file() for p in spool.rglob("*"))          # nothing half-written
        refused = [e for e in node.log_events() if e.get("event") == "store_refused_disk_low"]
        assert len(refused) == 1 and refused[0]["sop_uid"] == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_token_guards_everything_but_healthz(tmp_path, pack):
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, extra={"http": {"token": "s3cret-token"}})
    with node:
        node.start()
        assert get(node.http_url + "/healthz")[0] == 200
        for path in ("/metrics", "/readyz", "/"):
            assert get(node.http_url + path)[0] == 401, path
            assert get(node.http_url + path, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert scrape(node, {"Authorization": "Bearer s3cret-token"})
        basic = base64.b64encode(b"admin:s3cret-token").decode()
        assert get(node.http_url + "/", {"Authorization": f"Basic {basic}"})[0] == 200
        assert "s3cret-token" not in node.log_text()


def test_the_endpoint_over_tls(tmp_path, pack):
    import ssl

    from tests.test_node_tls import _make_certs

    certs = _make_certs(tmp_path / "certs")
    node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                     extra={"http": {"tls": {"enabled": True, "cert_file": str(certs / "server.crt"),
                                             "key_file": str(certs / "server.key")}}})
    with node:
        node.start()
        url = node.http_url
        assert url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with urllib.request.urlopen(url + "/readyz", context=ctx, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["ready"] is True
        with urllib.request.urlopen(url + "/metrics", context=ctx, timeout=30) as r:
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert "cephnode_queue_depth" in names
        with pytest.raises(urllib.error.URLError):       # an unknown CA is refused
            urllib.request.urlopen(url + "/healthz", context=ssl.create_default_context(), timeout=30)
