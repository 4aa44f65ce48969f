"""Hostile peers over real sockets, for the hardening tests, the fuzz suite and the bench."""
from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.dcmtk import echoscu


def stall(port: int, n: int, kind: str, host: str = "127.0.0.1") -> list[socket.socket]:
    """Open n connections that stall:
    silent       connect and send nothing
    partial_pdu  send 11 bytes of an A-ASSOCIATE-RQ that declares 200, then nothing
    """
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        if kind == "partial_pdu":
            s.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00\x01\x00\x00\x43")
        socks.append(s)
    return socks


def closed_by_peer(s: socket.socket, wait: float = 0.0) -> bool:
    """True when the node has closed this connection (EOF or reset on read)."""
    s.settimeout(wait)
    try:
        return s.recv(4096) == b""
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True


def time_until_served(port: int, *, called_ae: str = "CEPHNODE", calling_ae: str = "MODALITY",
                      limit_s: float = 180.0) -> float:
    """Seconds until a real caller (dcmtk echoscu) gets a C-ECHO through."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            if echoscu(port, called_ae=called_ae, calling_ae=calling_ae, timeout=20).returncode == 0:
                return time.monotonic() - t0
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
    return float("inf")


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_figures(pid: int) -> dict[str, Any]:
    """Peak RSS (VmHWM) of the node and of each of its worker processes, threads and fds."""
    kids = children(pid)
    return {"node_peak_rss_mb": round(_status_kb(pid, "VmHWM") / 1024, 1),
            "worker_peak_rss_mb": [round(_status_kb(k, "VmHWM") / 1024, 1) for k in kids],
            "node_threads": _status_kb(pid, "Threads"),
            "node_open_fds": len(list(Path(f"/proc/{pid}/fd").glob("*")))}


def send_raw(port: int, path: Path, sop_class: str, transfer_syntax: str, *, calling_ae: str = "MODALITY",
             called_ae: str = "CEPHNODE") -> dict[str, Any]:
    """C-STORE a file's bytes exactly as they are (pynetdicom, chunked from the file).
    Returns {"status": int} or {"wire": "why the association or transfer failed"}."""
    from pynetdicom import AE, _config

    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(sop_class, [transfer_syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not assoc.is_established:
            return {"wire": "association not established"}
        try:
            status = assoc.send_c_store(path)
        except Exception as exc:  # our sender could not even encode the request
            assoc.abort()
            return {"wire": f"sender error {type(exc).__name__}"}
        code = getattr(status, "Status", None)
        if assoc.is_established:
            assoc.release()
        return {"status": code} if code is not None else {"wire": "no response (aborted)"}
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
