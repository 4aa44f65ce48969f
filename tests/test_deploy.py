"""deploy/cephnode.service passes `systemd-analyze verify` and scores as well sandboxed in
`systemd-analyze security` (offline, the unit file as shipped); its stop is the graceful
SIGTERM the node handles (tests/test_node_e2e.py checks a SIGTERM exits 0)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.nodeproc import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "cephnode.service"
INSTALLED_COMMAND = "/opt/cephnode/bin/cephnode"   # where the README's wheel install puts it


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with only its install prefix replaced by this environment's real `cephnode`
    console script: verify checks that ExecStart exists and is executable."""
    here = Path(sys.executable).parent / "cephnode"
    assert here.is_file(), "the cephnode console script is not installed in this environment"
    text = UNIT.read_text()
    assert text.count(INSTALLED_COMMAND) == 1
    out = tmp_path / "cephnode.service"
    out.write_text(text.replace(INSTALLED_COMMAND, str(here)))
    return out


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            found.setdefault(m.group(1), []).append(m.group(2).strip())
    return found


def test_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "./dev installs systemd (systemd-analyze)"
    unit = _unit_for_this_machine(tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0 and "cephnode.service" not in res.stderr, res.stderr


def test_unit_is_sandboxed_and_stops_gracefully(tmp_path):
    d = _directives(UNIT.read_text())
    assert d["User"] == ["cephnode"] and d["Group"] == ["cephnode"]        # a dedicated user
    assert d["Restart"] == ["on-failure"]
    assert d["KillSignal"] == ["SIGTERM"] and int(d["TimeoutStopSec"][0]) > 120   # the node's own stop limit
    assert d["ProtectSystem"] == ["strict"] and d["ReadWritePaths"] == ["/var/lib/cephnode"]
    assert d["NoNewPrivileges"] == ["true"] and d["UMask"] == ["0077"] and d["StateDirectoryMode"] == ["0700"]
    assert d["CapabilityBoundingSet"] == [""]
    unit = _unit_for_this_machine(tmp_path)
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    m = re.search(r"Overall exposure level for cephnode\.service: ([0-9.]+) (\w+)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)
