"""A real Orthanc (the Debian package) started by a test, as the hospital archive.

Each server lives in its own temporary directory with a generated configuration, listens
on free loopback ports, and is stopped (SIGTERM, then SIGKILL) by the test. Orthanc 1.10
has no option to bind its DICOM port to one address, so that port listens on every
interface for the short life of a test; its HTTP API only answers loopback
(RemoteAccessAllowed false).

Usage:
    with start_orthanc(tmp_path, modalities={"node": ("CEPHNODE", "127.0.0.1", port)},
                       lua=autoroute_lua("node", skip_aets=("CEPHNODE",))) as pacs:
        ... storescu to pacs.dicom_port ...
        pacs.wait_for_instances(n)
        ds = pacs.dataset(pacs.instances()[0])
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"   # Debian orthanc-dicomweb


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def autoroute_lua(modality: str, *, skip_aets: tuple[str, ...] = ()) -> str:
    """A Lua script that forwards every stored instance to `modality` (a DicomModalities name),
    except instances sent by one of `skip_aets` (so the node's results are not routed back
    to it, which would loop)."""
    skip = ", ".join(f'["{a.strip().upper()}"] = true' for a in skip_aets)
    return f"""
local skip = {{ {skip} }}
function OnStoredInstance(instanceId, tags, metadata, origin)
  local remote = ''
  if origin ~= nil and origin['RemoteAet'] ~= nil then remote = string.upper(origin['RemoteAet']) end
  if metadata ~= nil and remote == '' and metadata['RemoteAET'] ~= nil then remote = string.upper(metadata['RemoteAET']) end
  if skip[remote] then return end
  SendToModality(instanceId, '{modality}')
end
"""


@dataclass
class OrthancServer:
    root: Path
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # ---- REST -------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/octet-stream", timeout: float = 60) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        users = self.config.get("RegisteredUsers") or {}
        if self.config.get("AuthenticationEnabled") and users:   # the test's own calls use the first user
            user, password = next(iter(users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        out = self.request("POST", path, json.dumps(payload).encode(), "application/json")
        return json.loads(out) if out else None

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.get_json("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Tags by keyword ('simplified' form: {"Modality": "SR", ...})."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        return pydicom.dcmread(BytesIO(self.instance_file(instance_id)))

    def instances_by_sop_uid(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc identifier, for every stored instance."""
        out: dict[str, str] = {}
        for iid in self.instances():
            tags = self.get_json(f"/instances/{iid}/simplified-tags")
            out[str(tags.get("SOPInstanceUID"))] = iid
        return out

    def find_instances(self, **query: str) -> list[str]:
        """Instance identifiers matching a DICOM query at instance level, e.g. Modality="SR"."""
        return list(self.post_json("/tools/find", {"Level": "Instance", "Query": query, "Expand": False}))

    def upload(self, data: bytes) -> dict[str, Any]:
        return json.loads(self.request("POST", "/instances", data, "application/dicom"))

    def delete_instance(self, instance_id: str) -> None:
        self.request("DELETE", f"/instances/{instance_id}")

    def statistics(self) -> dict[str, Any]:
        return dict(self.get_json("/statistics"))

    def wait_for_instances(self, count: int, *, timeout: float = 120.0, poll: float = 0.25,
                           predicate=None) -> list[str]:
        """Wait until at least `count` instances (optionally only those whose simplified tags
        satisfy `predicate`) are stored; returns them. Raises TimeoutError with what it saw."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            ids = self.instances()
            if predicate is None:
                seen = ids
            else:
                seen = [i for i in ids if predicate(self.instance_tags(i))]
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc holds {len(seen)} matching instances, wanted {count}")
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; log: {self.log_tail()}")
            time.sleep(poll)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ---- life cycle -------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def __enter__(self) -> "OrthancServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_orthanc(
    workdir: str | Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    lua: str | None = None,
    always_allow_store: bool = True,
    extra_config: dict[str, Any] | None = None,
    startup_timeout: float = 60.0,
    dicom_port: int | None = None,
    http_port: int | None = None,
    dicomweb: bool = False,
) -> OrthancServer:
    """Start Orthanc with its storage in `workdir` and wait until its REST API answers.

    modalities: DicomModalities name -> (AE title, host, port), the peers Orthanc may send to.
    lua: the text of a Lua script (see autoroute_lua) installed as LuaScripts.
    dicom_port: a fixed DICOM port (e.g. to bring a destination 'back' where the node expects it).
    http_port: a fixed HTTP port (the same for a DICOMweb destination).
    dicomweb: load the DICOMweb plugin (Debian orthanc-dicomweb) at <url>/dicom-web/.
    """
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    storage = root / "storage"
    storage.mkdir(exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), http_port or free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config: dict[str, Any] = {
        "Name": f"test-{aet}",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "TemporaryDirectory": str(root / "tmp"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": always_allow_store,
        "DicomModalities": {name: list(v) for name, v in (modalities or {}).items()},
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,
        "UnknownSopClassAccepted": True,   # the node sends SR, SEG, GSPS: keep them all
        "StableAge": 2,
        "Plugins": [],
        "LuaScripts": [],
        "HttpTimeout": 30,
        "StorageCompression": False,
        "ConcurrentJobs": 2,
    }
    (root / "tmp").mkdir(exist_ok=True)
    if lua is not None:
        lua_path = root / "route.lua"
        lua_path.write_text(lua)
        config["LuaScripts"] = [str(lua_path)]
    if dicomweb:
        config["Plugins"] = [DICOMWEB_PLUGIN]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False}
    config.update(extra_config or {})
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [ORTHANC_BINARY, "--no-jobs", str(config_path)],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
        env={**os.environ, "LANG": "C.UTF-8"},
    )
    log.close()
    server = OrthancServer(root, aet, dicom_port, http_port, process, log_path, config)
    deadline = time.monotonic() + startup_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode} at start: {server.log_tail()}")
        try:
            server.get_json("/system")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"Orthanc REST did not answer in {startup_timeout} s: {server.log_tail()}")
        time.sleep(0.1)
