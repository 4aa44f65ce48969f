"""Run the real node (`python -m cephnode serve -c FILE`) as a separate process in tests,
so that kill -9, SIGTERM and restarts are the real thing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.dcmtk import echoscu

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def test_model_pack(cache_dir: Path) -> Path:
    """models/default when the project's default pack is there and loads, else the small
    stand-in pack (built once into cache_dir)."""
    default = REPO_ROOT / "models" / "default"
    if default.is_dir():
        from cephnode.inference.pack import PackError, load_pack

        try:
            load_pack(default)
            return default
        except PackError:
            pass
    from tests.support.standin import build_standin_pack

    dest = Path(cache_dir) / "standin-pack"
    if not (dest / "pack.json").is_file():
        build_standin_pack(dest)
    return dest


test_model_pack.__test__ = False  # not a test, despite its name


# ---- a minimal TOML writer (the standard library only reads TOML) ------------------------
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_array(v)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if _is_table_array(v)}
    out = [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for k, v in tables.items():
        name = f"{prefix}{k}"
        out.append(f"\n[{name}]")
        out.append(to_toml(v, name + "."))
    for k, items in arrays.items():
        name = f"{prefix}{k}"
        for item in items:
            out.append(f"\n[[{name}]]")
            out.append(to_toml(item, name + "."))
    return "\n".join(x for x in out if x != "")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


# ---- the node process -------------------------------------------------------------------
@dataclass
class NodeProcess:
    config_path: Path
    config: dict[str, Any]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def ae_title(self) -> str:
        return self.config["listen"].get("ae_title", "CEPHNODE")

    @property
    def db_path(self) -> Path:
        return Path(self.config["storage"]["data_dir"]) / "queue.sqlite"

    def start(self, *, wait: bool = True, calling_ae: str | None = None) -> "NodeProcess":
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cephnode", "serve", "-c", str(self.config_path)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        if wait:
            self.wait_ready(calling_ae or self._an_allowed_ae())
        return self

    def _an_allowed_ae(self) -> str:
        callers = self.config["listen"].get("allowed_callers") or []
        return callers[0]["ae_title"] if callers else "ANY"

    def wait_ready(self, calling_ae: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log_tail()}")
            if echoscu(self.port, called_ae=self.ae_title, calling_ae=calling_ae, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"node did not answer C-ECHO:\n{self.log_tail()}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM (graceful stop); returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cephnode", *args, "-c", str(self.config_path)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    def status(self) -> dict[str, Any]:
        res = self.cli("status", "--json")
        if res.returncode != 0:
            raise RuntimeError(res.stderr)
        return json.loads(res.stdout)

    def wait_for(self, predicate, *, timeout: float = 300, poll: float = 0.3, what: str = "condition") -> dict:
        """Poll `cephnode status --json` until predicate(status) is true; returns the status."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if self.db_path.exists():
                last = self.status()
                if predicate(last):
                    return last
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode} waiting for {what}:\n{self.log_tail()}")
            time.sleep(poll)
        raise TimeoutError(f"timed out waiting for {what}; last status: {json.dumps(last)[:2000]}\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return events

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=30)


def make_node(workdir: Path, *, port: int, pack: Path, allowed_callers: list[dict] | None = None,
              destinations: list[dict] | None = None, quiet_period_s: float = 1.0,
              retry: dict | None = None, extra: dict | None = None) -> NodeProcess:
    """Write a node configuration for a test (loopback only, CPU, one thread) and return the
    process handle, not yet started."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "listen": {"ae_title": "CEPHNODE", "bind_address": "127.0.0.1", "port": port,
                   "allowed_callers": allowed_callers or []},
        "storage": {"data_dir": str(workdir / "data")},
        "study": {"quiet_period_s": quiet_period_s},
        "destinations": destinations or [],
        "retry": retry or {"max_attempts": 20, "initial_delay_s": 0.5, "factor": 1.5, "max_delay_s": 2.0},
        "processing": {"models_dir": str(pack), "device": "cpu", "threads": 1},
        "logging": {"level": "INFO", "format": "json"},
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    if not config["destinations"]:
        del config["destinations"]
    path = workdir / "cephnode.toml"
    path.write_text(to_toml(config) + "\n")
    return NodeProcess(path, config, workdir / "node.log")
