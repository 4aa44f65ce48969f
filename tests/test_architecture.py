"""The rooms import each other in one direction only (docs/architecture.md).

Every import statement of every module is read with `ast`, those inside functions included,
since a late import is still an arrow."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support.nodeproc import REPO_ROOT

# room -> the rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "models": set(),
    "config": {"domain"},
    "inference": {"domain", "models"},
    "cephalometry": {"domain"},
    "dicom_io": {"domain", "cephalometry", "inference"},
    "training": {"domain", "inference", "cephalometry", "models"},
    "node": {"domain", "config", "inference", "cephalometry", "dicom_io", "models"},
    "cli": {"domain", "config", "inference", "cephalometry", "dicom_io", "training", "node", "models"},
}


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cephnode" and len(parts) > 1 and parts[1] in ALLOWED:
                rooms.add(parts[1])
    return rooms


def test_every_room_is_known():
    mapped = {line.split("=")[0].strip().strip('"').split(".")[-1]
              for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
              if line.startswith('"cephnode.') and "=" in line and "[" not in line}
    assert mapped == set(ALLOWED), mapped ^ set(ALLOWED)


def test_imports_run_one_way():
    wrong = []
    for room, allowed in ALLOWED.items():
        for path in sorted((REPO_ROOT / room).rglob("*.py")):
            for other in _imported_rooms(path) - allowed - {room}:
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports cephnode.{other}")
    assert wrong == []


def test_the_checker_sees_a_late_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cephnode.dicom_io.pixels import read_dicom_image\n")
    assert _imported_rooms(module) == {"dicom_io"}
