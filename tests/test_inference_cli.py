"""`cephnode infer`, `cephnode models list|verify|fetch`.

The fetch test runs the real huggingface_hub client (in a real `cephnode` subprocess, pointed
at it by HF_ENDPOINT) against a small HTTP server on 127.0.0.1 that answers the way the hub
does: the tree listing API, and HEAD/GET on /<repo>/resolve/<revision>/<path> with the
X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size headers the client reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest

from cephnode.inference import contract
from cephnode.inference.pack import PUBLISHED_NAME, load_pack
from tests.support.standin import build_standin_pack
from cephnode.training import isbi

REPO = Path(__file__).resolve().parent.parent


def cephnode(*args, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("PYTHONPATH", str(REPO))
    p = subprocess.run([sys.executable, "-m", "cephnode", *map(str, args)], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"cephnode {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    return build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small")


def test_infer_prints_a_table_and_writes_json_and_overlay(pack_dir, tmp_path):
    img = isbi.load_cases("train")[2].image_path
    out = tmp_path / "res.json"
    ov = tmp_path / "ov"
    p = cephnode("infer", img, "--models", pack_dir, "--json", out, "--overlay", ov, "--spacing", "0.2", "0.2")
    assert "landmark" in p.stdout and "Prn" in p.stdout and img.name in p.stdout
    data = json.loads(out.read_text())
    assert len(data) == 1 and data[0]["image_name"] == img.name and len(data[0]["landmarks"]) == 25
    assert data[0]["pixel_spacing_mm"] == [0.2, 0.2]
    png = cv2.imread(str(ov / f"{img.stem}.overlay.png"))
    src = cv2.imread(str(img))
    assert png.shape == src.shape
    # something was drawn in colour on the grey radiograph
    b, g, r = cv2.split(png.astype(int))
    assert (np.abs(g - r) > 60).sum() > 200


def test_infer_reports_unreadable_files(pack_dir, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    p = cephnode("infer", bad, "--models", pack_dir, check=False)
    assert p.returncode == 1 and "x.png" in p.stderr


def test_models_verify_and_list(pack_dir, tmp_path):
    p = cephnode("models", "verify", pack_dir)
    assert p.stdout.startswith("OK") and "v4_stage1.onnx" in p.stdout and "CPUExecutionProvider" in p.stdout
    broken = tmp_path / "packs" / "broken"
    import shutil
    shutil.copytree(pack_dir, broken)
    (broken / contract.ZONE4.path).write_bytes(b"0" * 100)
    p = cephnode("models", "verify", broken, check=False)
    assert p.returncode == 1 and "z4_posterior_contours.onnx" in p.stderr
    shutil.copytree(pack_dir, tmp_path / "packs" / "good")
    p = cephnode("models", "list", "--root", tmp_path / "packs")
    assert "good: standin-small" in p.stdout and "broken: UNUSABLE" in p.stdout


# ---- a local stand-in for the model hub ---------------------------------------------------

class _Hub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    repo_id = "CephTrace/cephtrace-v4"
    commit = "0123456789abcdef0123456789abcdef01234567"
    requests: list[str] = []

    def log_message(self, *a):  # keep pytest output clean
        pass

    def _send(self, code, body=b"", headers=None, head=False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head):
        path = unquote(urlsplit(self.path).path)
        self.requests.append(f"{self.command} {path}")
        tree = f"/api/models/{self.repo_id}/tree/main"
        if path == tree:
            listing = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest(),
                        "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}}
                       for p, b in self.files.items()]
            listing.append({"type": "file", "path": "README.md", "size": 6, "oid": "0" * 40})
            return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
        if path in (f"/api/models/{self.repo_id}/revision/main", f"/api/models/{self.repo_id}"):
            info = {"id": self.repo_id, "modelId": self.repo_id, "sha": self.commit, "private": False,
                    "siblings": [{"rfilename": p} for p in self.files]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/{self.repo_id}/resolve/main/"
        if path.startswith(prefix) and path[len(prefix):] in self.files:
            body = self.files[path[len(prefix):]]
            sha = hashlib.sha256(body).hexdigest()
            hdr = {"X-Repo-Commit": self.commit, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                   "X-Linked-Size": str(len(body)), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
            return self._send(200, body, hdr, head)
        return self._send(404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"}, head)

    def do_GET(self):
        self._route(False)

    def do_HEAD(self):
        self._route(True)


@pytest.fixture
def hub(pack_dir):
    # The hub lays files out under onnx/ rather than the contract paths: fetch must find them.
    files = {f"onnx/{spec.path}": (pack_dir / spec.path).read_bytes() for spec in contract.MODELS}
    handler = type("Hub", (_Hub,), {"files": files, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_models_fetch_downloads_through_huggingface_hub(hub, pack_dir, tmp_path):
    handler, url = hub
    dest = tmp_path / "published"
    env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_ENABLE_HF_TRANSFER": "0", "HF_HUB_DISABLE_XET": "1"}
    p = cephnode("models", "fetch", "--dest", dest, env=env)
    assert "fetched CephTrace/cephtrace-v4@main" in p.stdout
    for spec in contract.MODELS:
        assert (dest / spec.path).read_bytes() == (pack_dir / spec.path).read_bytes()
    manifest = json.loads((dest / "pack.json").read_text())
    assert manifest["name"] == PUBLISHED_NAME
    assert manifest["provenance"]["commit"] == handler.commit
    assert manifest["provenance"]["files"][contract.STAGE1.path] == f"onnx/{contract.STAGE1.path}"
    assert not manifest["provenance"]["matches_published_total_size"]    # stand-in files are tiny
    pack = load_pack(dest)
    assert pack.published and len(pack.predicted) == 25
    assert any(r.startswith("GET /CephTrace/cephtrace-v4/resolve/main/onnx/stage1") for r in handler.requests)
    assert not (dest / ".download").exists()


def test_models_fetch_names_a_file_the_hub_lacks(hub, tmp_path):
    handler, url = hub
    handler.files.pop(f"onnx/{contract.ZONE2.path}")
    env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
    p = cephnode("models", "fetch", "--dest", tmp_path / "d", env=env, check=False)
    assert p.returncode == 1 and "z2_midface_contours.onnx: not in the repository" in p.stderr
