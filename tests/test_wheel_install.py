"""cephnode as an admin installs it: a wheel, in a fresh virtual environment, used from a folder
that has no checkout in it. Proves the one-name package (`cephnode.*`, nothing generic in
site-packages) and that the default model pack travels inside the wheel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.dcmtk import echoscu
from tests.support.nodeproc import REPO_ROOT, to_toml
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel from this checkout and install it (with its dependencies, from the
    package index or pip's cache) into a new virtual environment; returns its bin/ folder."""
    work = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = work / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "cephnode-data", "node_modules"))
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(source)], check=True, cwd=work, timeout=600)
    wheels = list(dist.glob("cephnode-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheels[0])], check=True, cwd=work, timeout=1200)
    return env_dir / "bin"


def _outside_checkout(tmp_path: Path) -> dict[str, str]:
    """An environment that cannot see the checkout: no PYTHONPATH, a home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CEPHNODE_MODELS", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp_path)
    return env


def test_wheel_holds_one_package_and_the_default_pack(installed):
    wheel = next((installed.parent.parent / "dist").glob("cephnode-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"cephnode", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    manifest = json.loads((REPO_ROOT / "models" / "default" / "pack.json").read_text())
    for rel in manifest["files"]:
        assert f"cephnode/models/default/{rel}" in names, rel
    assert "cephnode/models/default/pack.json" in names
    assert "cephnode/config/example.toml" in names


def test_installed_cephnode_versions_infers_and_serves(installed, tmp_path):
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = _outside_checkout(tmp_path)
    cephnode = str(installed / "cephnode")

    ver = subprocess.run([cephnode, "--version"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=120)
    assert ver.returncode == 0, ver.stderr
    manifest = json.loads((REPO_ROOT / "models" / "default" / "pack.json").read_text())
    assert ver.stdout.splitlines()[0].startswith("cephnode 0."), ver.stdout
    assert f"{manifest['name']} {manifest['version']}" in ver.stdout
    # the pack it reports lives in the new environment, not in this checkout
    assert str(installed.parent) in ver.stdout and str(REPO_ROOT) not in ver.stdout

    from cephnode.training.isbi import data_dir

    image = data_dir() / "images" / "151.jpg"
    out = run_dir / "151.json"
    infer = subprocess.run([cephnode, "infer", str(image), "--json", str(out), "--threads", "1", "--device", "cpu"],
                           cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    (result,) = json.loads(out.read_text())
    points = {p["name"]: p for p in result["landmarks"]}
    assert len(points) == 25 and points["S"]["x"] is not None and points["S"]["confidence"] > 0.5

    port = free_port()
    config = run_dir / "node.toml"
    config.write_text(to_toml({
        "listen": {"ae_title": "WHEELNODE", "port": port, "bind_address": "127.0.0.1"},
        "storage": {"data_dir": str(run_dir / "data")},
        "processing": {"device": "cpu", "threads": 1},
    }))
    node = subprocess.Popen([cephnode, "serve", "-c", str(config)], cwd=run_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            echo = echoscu(port, called_ae="WHEELNODE")
            if echo.returncode == 0:
                break
            assert node.poll() is None, node.stdout.read()
            assert time.monotonic() < deadline, echo.stderr
            time.sleep(0.5)
    finally:
        node.terminate()
        node.wait(timeout=60)
