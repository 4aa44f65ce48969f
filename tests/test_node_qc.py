"""The node and the quality gate: a film the tracing cannot be trusted on goes out as a failed
QC (SR without values) and the job is listed as needing manual tracing, next to a real ceph
that is delivered as usual. A real `cephnode serve` process, real storescu."""
from __future__ import annotations

import pydicom
import pytest

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node, test_model_pack
from tests.support.nonceph import non_ceph_images
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow


def test_a_non_ceph_is_withheld_and_listed_as_needing_manual_tracing(tmp_path):
    pack = test_model_pack(tmp_path / "pack")
    node = make_node(tmp_path / "node", port=free_port(), pack=pack,
                     extra={"processing": {"outbox_kinds": ["sr", "gsps"]}})
    ceph = dicomgen.ceph_variant(dicomgen.isbi_image("152", scale=0.4), "plain")
    chest = dicomgen.make_dx(non_ceph_images()["chest"], pixel_spacing_mm=(0.2, 0.2),
                             study_uid=str(ceph.StudyInstanceUID))
    with node:
        node.start()
        sent = storescu([dicomgen.save(ceph, tmp_path / "ceph.dcm"), dicomgen.save(chest, tmp_path / "chest.dcm")],
                        node.port, called_ae=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        status = node.wait_for(lambda s: s["jobs"] == {"done": 2}, what="both jobs processed")
        manual = status["needs_manual_tracing"]
        assert [j["sop_uid"] for j in manual] == [str(chest.SOPInstanceUID)]
        assert manual[0]["error"].startswith("needs manual tracing: quality control failed")
        text = node.cli("status").stdout
        assert "NEEDS MANUAL TRACING (1;" in text and str(chest.SOPInstanceUID) in text
        events = [e for e in node.log_events() if e.get("event") == "needs_manual_tracing"]
        assert [e["sop_uid"] for e in events] == [str(chest.SOPInstanceUID)] and events[0]["reasons"]
        outbox = tmp_path / "node" / "data" / "outbox"
        srs = {}
        for path in outbox.rglob("sr-*.dcm"):
            ds = pydicom.dcmread(path)
            srs[str(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                    .ReferencedSOPSequence[0].ReferencedSOPInstanceUID)] = ds
        assert set(srs) == {str(ceph.SOPInstanceUID), str(chest.SOPInstanceUID)}

        def nums(ds):
            def walk(seq):
                for item in seq:
                    yield item
                    yield from walk(item.get("ContentSequence", []))
            return [i for i in walk(ds.ContentSequence) if i.ValueType == "NUM" and i.RelationshipType == "CONTAINS"]

        assert nums(srs[str(chest.SOPInstanceUID)]) == []
        assert len(nums(srs[str(ceph.SOPInstanceUID)])) > 30
