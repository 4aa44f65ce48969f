"""The operator commands as an admin runs them: `cephnode config check`, `echo`, `status`."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support.dcmtk import start_storescp
from tests.support.nodeproc import REPO_ROOT
from tests.support.orthanc import free_port


def cephnode(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # run from any folder, installed or not
    return subprocess.run([sys.executable, "-m", "cephnode", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_config_check_lists_every_problem_with_its_key_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listen]\nport = "eleven"\n[study]\nquiet_period_s = -1\n[[destinations]]\nname = "x"\n')
    res = cephnode("config", "check", str(bad))
    assert res.returncode == 1
    for key in ("listen.port:", "study.quiet_period_s:", "destinations[0].ae_title:", "destinations[0].host:",
                "destinations[0].port:"):
        assert key in res.stdout, (key, res.stdout)
    good = cephnode("config", "check", str(REPO_ROOT / "config" / "example.toml"))
    assert good.returncode == 0 and "OK" in good.stdout
    assert "warning: listen.tls is off" in good.stdout and "allowed_callers" not in good.stdout
    example = cephnode("config", "example")
    assert example.returncode == 0 and "[listen]" in example.stdout


def test_echo_a_peer_by_address(tmp_path):
    with start_storescp(tmp_path / "scp", ae_title="ARCHIVE") as scp:
        ok = cephnode("echo", f"ARCHIVE@127.0.0.1:{scp.port}", cwd=tmp_path)
        assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    down = cephnode("echo", f"ARCHIVE@127.0.0.1:{free_port()}", cwd=tmp_path)
    assert down.returncode == 1 and "FAILED" in down.stdout
    nonsense = cephnode("echo", "not-a-peer", cwd=tmp_path)
    assert nonsense.returncode == 2 and "AE@HOST:PORT" in nonsense.stderr


def test_status_without_a_database_says_so(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "nowhere"}"\n')
    res = cephnode("status", "-c", str(cfg))
    assert res.returncode == 1 and "no queue database" in res.stderr
