"""Every compressed or uncompressed transfer syntax the node decodes, sent through a real node
over the network: the files are encoded by third-party encoders (dcmtk's dcmcjpeg, dcmcjpls,
dcmcrle, dcmconv; OpenJPEG through pydicom), sent by dcmtk's storescu proposing that very
syntax (pynetdicom for the one storescu cannot propose), decoded by the permissively licensed
decoders alone (tests/test_licences.py), and traced. Lossless syntaxes must give exactly the
tracing of the uncompressed file; lossy ones a tracing close to it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from cephnode.dicom_io.spool import safe_name
from cephnode.dicom_io.transfer_syntaxes import decodable_transfer_syntaxes
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port
from tests.support.scu import c_store

pytestmark = pytest.mark.slow

# transfer syntax -> (bits stored of the source, how it is encoded, lossless?)
ENCODINGS = {
    ExplicitVRLittleEndian: (12, None, True),
    ImplicitVRLittleEndian: (12, ["dcmconv", "+ti"], True),
    DeflatedExplicitVRLittleEndian: (12, ["dcmconv", "+td"], True),
    ExplicitVRBigEndian: (12, ["dcmconv", "+tb"], True),
    JPEGBaseline8Bit: (8, ["dcmcjpeg", "+eb", "+q", "95"], False),
    JPEGExtended12Bit: (12, ["dcmcjpeg", "+ee", "+q", "95"], False),
    JPEGLossless: (12, ["dcmcjpeg", "+el"], True),
    JPEGLosslessSV1: (12, ["dcmcjpeg", "+e1"], True),
    JPEGLSLossless: (12, ["dcmcjpls", "+el"], True),
    JPEGLSNearLossless: (12, ["dcmcjpls", "+en"], False),
    JPEG2000Lossless: (12, "openjpeg", True),
    JPEG2000: (12, "openjpeg", False),
    RLELossless: (12, ["dcmcrle"], True),
}
# High-Throughput JPEG 2000 decodes (pylibjpeg-openjpeg) but nothing here can encode it.
NOT_SENT = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
STORESCU_CANNOT_PROPOSE = {JPEGLossless}


def _encode(src: Path, dst: Path, how, ts: str) -> Path:
    if how is None:
        return src
    dst.parent.mkdir(parents=True, exist_ok=True)
    if how == "openjpeg":
        ds = pydicom.dcmread(src)
        kw = {} if ts == JPEG2000Lossless else {"j2k_cr": [20]}
        ds.compress(ts, **kw)
        ds.save_as(dst, enforce_file_format=True)
    else:
        res = subprocess.run([*how, str(src), str(dst)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    return dst


def test_every_decodable_syntax_is_traced_through_the_node(tmp_path, pack):
    decodable = {str(u) for u in decodable_transfer_syntaxes()}
    assert decodable - NOT_SENT == {str(u) for u in ENCODINGS}, "a decodable syntax has no encoding here"
    img = dicomgen.isbi_image("151", scale=0.3)
    study = generate_uid()
    sources: dict[str, Path] = {}
    for ts, (bits, how, _) in ENCODINGS.items():
        ds = dicomgen.make_dx(img, bits=bits, study_uid=study)
        src = dicomgen.save(ds, tmp_path / "src" / f"{ts}.dcm")
        out = _encode(src, tmp_path / "sent" / f"{ts}.dcm", how, ts)
        assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
        sources[ts] = out

    node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5)
    with node:
        node.start()
        by_storescu = [p for ts, p in sources.items() if ts not in STORESCU_CANNOT_PROPOSE]
        sent = storescu(by_storescu, node.port, called_ae="CEPHNODE")
        assert sent.returncode == 0, sent.stderr
        for ts in STORESCU_CANNOT_PROPOSE:
            assert c_store(sources[ts], node.port) == 0
        status = node.wait_for(lambda s: s["queue_depth"] == 0 and sum(s["jobs"].values()) == len(ENCODINGS),
                               what="every syntax processed")
        assert status["jobs"] == {"done": len(ENCODINGS)}, [(j["sop_uid"], j["error"]) for j in status["failed_jobs"]]

        from cephnode.node.jobstore import JobStore

        received = {r["sop_uid"]: r["transfer_syntax"] for r in JobStore(node.db_path).instances()}
        outbox = Path(node.config["storage"]["data_dir"]) / "outbox" / safe_name(study)
        tracings = {}
        for ts, path in sources.items():
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert received[sop] == ts                      # went over the wire in that syntax
            result = json.loads((outbox / safe_name(sop) / "result.json").read_text())
            tracings[ts] = {lm["name"]: (lm["x"], lm["y"]) for lm in result["landmarks"] if lm["x"] is not None}

    reference = tracings[ExplicitVRLittleEndian]
    assert len(reference) >= 19
    for ts, (bits, _, lossless) in ENCODINGS.items():
        got = tracings[ts]
        assert set(got) == set(reference), ts
        d = np.array([np.hypot(got[n][0] - reference[n][0], got[n][1] - reference[n][1]) for n in reference])
        if lossless and bits == 12:
            assert d.max() < 1e-3, (ts, d.max())          # the very same pixels
        else:  # lossy (or 8 bits of the same picture): the same anatomy within a few pixels
            assert np.median(d) < 0.01 * img.shape[1], (ts, np.median(d))
