"""dcmtk command-line tools as the modality (storescu, echoscu) and as a plain archive (storescp).

Only thin wrappers: the tools themselves talk DICOM over real loopback sockets.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pydicom

from tests.support.orthanc import free_port


# storescu proposes only uncompressed syntaxes unless told which compressed one to offer.
_PROPOSE_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.2": "-xb", "1.2.840.10008.1.2": "-xi",
}


def storescu(files: Sequence[str | Path], port: int, *, called_ae: str, calling_ae: str = "MODALITY",
             host: str = "127.0.0.1", extra: Sequence[str] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """Send files: one storescu run (one association) per compressed transfer syntax among them,
    proposing that syntax, plus one for the uncompressed files. Does not raise: check
    .returncode (the worst of the runs) and .stderr (all of them).
    `-nh` (no halt) makes storescu go on after a refused instance, like a real modality batch."""
    groups: dict[str, list[str]] = {}
    for f in files:
        try:
            ts = str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.TransferSyntaxUID)
        except Exception:
            ts = ""
        groups.setdefault(_PROPOSE_OPTION.get(ts, ""), []).append(str(f))
    rc, out, err = 0, [], []
    for option, group in groups.items():
        cmd = ["storescu", "-nh", *([option] if option else []), "-aet", calling_ae, "-aec", called_ae,
               *extra, host, str(port), *group]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc = max(rc, res.returncode)
        out.append(res.stdout)
        err.append(res.stderr)
    return subprocess.CompletedProcess(["storescu"], rc, "".join(out), "".join(err))


def echoscu(port: int, *, called_ae: str, calling_ae: str = "MODALITY", host: str = "127.0.0.1",
            timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["echoscu", "-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class StoreSCP:
    """dcmtk storescp writing every received object into `folder`."""
    folder: Path
    port: int
    ae_title: str
    process: subprocess.Popen

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for_files(self, count: int, timeout: float = 120) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.files()
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise TimeoutError(f"storescp holds {len(self.files())} files, wanted {count}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> "StoreSCP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _profile(sop_classes: Sequence[str]) -> str:
    """A dcmtk association-negotiation profile accepting only these SOP classes (and C-ECHO),
    uncompressed: a real archive that refuses the rest at presentation-context level."""
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]",
             "TransferSyntax1 = 1.2.840.10008.1.2.1", "TransferSyntax2 = 1.2.840.10008.1.2",
             "", "[[PresentationContexts]]", "[Accepted]"]
    for i, uid in enumerate([*sop_classes, "1.2.840.10008.1.1"], start=1):
        lines.append(f"PresentationContext{i} = {uid}\\Uncompressed")
    lines += ["", "[[Profiles]]", "[Restricted]", "PresentationContexts = Accepted", ""]
    return "\n".join(lines)


def start_storescp(folder: str | Path, *, ae_title: str = "STORESCP", port: int | None = None,
                   accept_only: Sequence[str] | None = None) -> StoreSCP:
    """accept_only: SOP Class UIDs; every other SOP class is refused at negotiation."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    extra: list[str] = []
    if accept_only is not None:
        cfg = folder.parent / f"{folder.name}-profile.cfg"
        cfg.write_text(_profile(accept_only))
        extra = ["-xf", str(cfg), "Restricted"]
    # +B: write directly (no temporary file names appear in the folder); -uf: SOP-UID file names
    proc = subprocess.Popen(["storescp", *extra, "-aet", ae_title, "+B", "-uf", "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scp = StoreSCP(folder, port, ae_title, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ready when it answers C-ECHO
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited: {proc.stderr.read().decode(errors='replace')}")
        if echoscu(port, called_ae=ae_title).returncode == 0:
            return scp
        time.sleep(0.1)
    scp.stop()
    raise TimeoutError("storescp did not answer C-ECHO")
