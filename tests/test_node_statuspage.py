"""The status page of a real `cephnode serve` after real C-STOREs, opened in headless Chromium
(Debian's `chromium`): what the browser renders must show the listener and pack, the queue,
the jobs with their timings and tracing thumbnails, failed and parked work with the reason,
and the destinations with their last error; no patient name or ID."""
from __future__ import annotations

import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import start_storescp, storescu
from tests.support.nodeproc import make_node, test_model_pack
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page(HTMLParser):
    """Text of each element with an id, rows of each table (by id), and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, list[dict]] = {}
        self.images: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table:
            self._row = {"attrs": a, "cells": [], "images": []}
        elif tag in ("td", "th") and self._row is not None:
            self._row["cells"].append("")
        elif tag == "img":
            self.images.append(a["src"])
            if self._row is not None:
                self._row["images"].append(a["src"])
        if tag not in ("img", "meta", "br"):
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.by_id[a["id"]] = ""

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            if self._row["cells"] and self._table:
                self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, ident in self._open:
            if ident:
                self.by_id[ident] += data
        if self._row is not None and self._row["cells"]:
            self._row["cells"][-1] += data


def chromium(*args: str, tmp) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp}", *args], capture_output=True, timeout=180)


def test_status_page_in_chromium_shows_the_node_as_it_is(tmp_path):
    pack = test_model_pack(tmp_path / "pack")
    img = dicomgen.isbi_image("151", scale=0.3)
    with start_storescp(tmp_path / "archive", ae_title="ARCHIVE") as archive:
        node = make_node(
            tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5,
            destinations=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port,
                           "kinds": ["sr"]},
                          {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(),
                           "kinds": ["sr"]}],
            retry={"max_attempts": 1, "initial_delay_s": 0.2, "factor": 1.0, "max_delay_s": 0.2})
        with node:
            node.start()
            study = generate_uid()
            sources = [dicomgen.make_dx(img, study_uid=study) for _ in range(2)]
            files = [dicomgen.save(ds, tmp_path / "send" / f"c{i}.dcm") for i, ds in enumerate(sources)]
            assert storescu(files, node.port, called_ae="CEPHNODE").returncode == 0
            status = node.wait_for(lambda s: s["queue_depth"] == 0 and s["jobs"].get("failed") == 2,
                                   what="both jobs processed, their SR parked on 'down'")
            archive.wait_for_files(2)

            res = chromium("--virtual-time-budget=5000", "--dump-dom", node.http_url + "/", tmp=tmp_path / "chr")
            assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
            dom = res.stdout.decode()
            page = Page()
            page.feed(dom)

            from cephnode.inference.pack import load_pack

            manifest = load_pack(pack)
            assert page.by_id["listener"].startswith(f"CEPHNODE on 127.0.0.1:{node.port}")
            assert manifest.name in page.by_id["pack"] and manifest.version in page.by_id["pack"]
            assert page.by_id["queue-depth"] == "0"
            assert "ready" in page.by_id["ready"] and "not ready" not in page.by_id["ready"]
            assert page.by_id["instances"].startswith("2 received, 2 selected")

            dests = {r["attrs"]["data-destination"]: r["cells"] for r in page.rows["destinations"]
                     if "data-destination" in r["attrs"]}
            assert dests["archive"][2:5] == ["2", "0", "0"] and dests["archive"][6] == ""
            assert dests["down"][2:5] == ["0", "0", "2"]
            assert "cannot connect" in dests["down"][6] or "unreachable" in dests["down"][6]

            jobs = [r for r in page.rows["recent-jobs"] if "data-job" in r["attrs"]]
            assert sorted(int(r["attrs"]["data-job"]) for r in jobs) == sorted(j["id"] for j in status["recent_jobs"])
            sops = {str(ds.SOPInstanceUID) for ds in sources}
            for r in jobs:
                assert r["cells"][5] in sops
                assert "inference" in r["cells"][3] and "decode" in r["cells"][3]   # timings
                assert r["images"] == [f"/jobs/{r['attrs']['data-job']}/thumbnail.png"]
            failed = [r for r in page.rows["failed"] if "data-job" in r["attrs"]]
            assert len(failed) == 2 and all("delivery failed: down sr" in r["cells"][2] for r in failed)
            parked = [r for r in page.rows["parked"] if r["cells"] and r["cells"][0].isdigit()]
            assert len(parked) == 2 and all(r["cells"][2] == "down" for r in parked)
            assert "Test^Ceph" not in dom and "CEPH-TEST-001" not in dom           # no PHI without log_phi

            # the thumbnails the browser loads: small PNGs of the radiograph with coloured dots
            for src in page.images:
                with urllib.request.urlopen(node.http_url + src, timeout=60) as r:
                    assert r.headers["Content-Type"] == "image/png"
                    thumb = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
                assert thumb.shape[1] == 160 and abs(thumb.shape[0] / 160 - img.shape[0] / img.shape[1]) < 0.02
                coloured = np.abs(thumb.astype(int) - thumb.mean(axis=2, keepdims=True)).max(axis=2) > 40
                assert coloured.sum() >= 19, coloured.sum()                    # landmark dots drawn
            shot = tmp_path / "status.png"
            res = chromium(f"--screenshot={shot}", "--window-size=1400,1600", "--virtual-time-budget=5000",
                           node.http_url + "/", tmp=tmp_path / "chr")
            assert res.returncode == 0 and shot.is_file()
            rendered = cv2.imread(str(shot))
            # the thumbnails are really drawn by the browser: radiograph-dark pixels on a white page
            assert (rendered.mean(axis=2) < 60).sum() > 160 * 100
