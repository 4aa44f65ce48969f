"""End to end with real peers: dcmtk storescu (the modality) -> Orthanc (the archive) -> Lua
auto-routing -> the node (a separate `cephnode serve` process) -> its SR/SEG/GSPS back into
Orthanc -> read through Orthanc's REST API and checked against direct inference on the very
same pixels."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from cephnode.dicom_io.pixels import read_dicom_image
from cephnode.dicom_io.uids import derived_uid
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import autoroute_lua, free_port, start_orthanc

pytestmark = pytest.mark.slow

VARIANTS = ("monochrome1", "window16", "jpeg2000", "mirrored", "rotated")
TRACKING_IDENTIFIER = "112039"  # DCM code of the TID 1410 Tracking Identifier


def sr_landmark_points(sr) -> dict[str, tuple[float, float]]:
    """Landmark name -> (x, y) in pixel-centre coordinates, from the SR's landmark groups
    (tracking identifier '...:Landmark <name>', the confidence NUM INFERRED FROM one SCOORD
    POINT; the group's own SCOORD is where a viewer writes the label; SCOORD is corner-based)."""
    points: dict[str, tuple[float, float]] = {}

    def walk(items) -> None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            if item.ValueType == "CONTAINER":
                name = None
                for ch in children:
                    if ch.ValueType == "TEXT" and ch.ConceptNameCodeSequence[0].CodeValue == TRACKING_IDENTIFIER:
                        name = str(ch.TextValue).rsplit(":", 1)[-1]
                below = [g for ch in children if ch.ValueType == "NUM" for g in ch.get("ContentSequence", [])]
                scoords = [g for g in below if g.ValueType == "SCOORD" and g.GraphicType == "POINT"]
                if name and name.startswith("Landmark ") and scoords:
                    x, y = (float(v) for v in scoords[0].GraphicData[:2])
                    points[name.split()[1]] = (x - 0.5, y - 0.5)
            walk(children)

    walk(sr.ContentSequence)
    return points


def test_routed_cephs_come_back_traced_like_direct_inference(tmp_path, pack):
    node_port = free_port()
    lua = autoroute_lua("cephnode", skip_aets=("CEPHNODE",))
    modalities = {"cephnode": ("CEPHNODE", "127.0.0.1", node_port)}
    with start_orthanc(tmp_path / "pacs", modalities=modalities, lua=lua) as pacs:
        node = make_node(
            tmp_path / "node", port=node_port, pack=pack,
            allowed_callers=[{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}],
            destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port,
                           "kinds": ["sr", "seg", "gsps"]}],
            extra={"processing": {"workers": 2}})   # two jobs at once: the queue must not hand one out twice
        with node:
            node.start(calling_ae="ORTHANC")
            img = dicomgen.isbi_image("151", scale=0.5)
            study_uid = generate_uid()
            sources = {v: dicomgen.ceph_variant(img, v, study_uid=study_uid) for v in VARIANTS}
            # a frontal (PA) view in the same study: acknowledged, kept, not traced
            pa = dicomgen.make_dx(img, study_uid=study_uid, series_description="PA CEPH")
            pa.ViewPosition = "PA"
            files = [dicomgen.save(ds, tmp_path / "modality" / f"{v}.dcm") for v, ds in sources.items()]
            files.append(dicomgen.save(pa, tmp_path / "modality" / "pa.dcm"))
            sent = storescu(files, pacs.dicom_port, called_ae="ORTHANC", calling_ae="CEPHSTAT")
            assert sent.returncode == 0, sent.stderr

            kinds = ("sr", "seg", "gsps")
            n_expected = len(files) + len(VARIANTS) * len(kinds)
            pacs.wait_for_instances(n_expected, timeout=600)
            status = node.wait_for(lambda s: s["jobs"].get("done", 0) == len(VARIANTS) and s["queue_depth"] == 0,
                                   what="all jobs done")
            assert status["instances"] == {"received": len(files), "selected": len(VARIANTS), "skipped": 1,
                                           "duplicates": 0, "pruned": 0}
            assert status["deliveries"] == {"done": len(VARIANTS) * len(kinds)}
            assert all(j["attempts"] == 1 for j in status["recent_jobs"]), status["recent_jobs"]
            started = [e["job_id"] for e in node.log_events() if e.get("event") == "job_started"]
            assert sorted(started) == sorted(set(started)) and len(started) == len(VARIANTS)
            assert any(e.get("event") == "instance_skipped" and "view position PA" in e.get("reason", "")
                       for e in node.log_events())

            from cephnode.node.jobstore import JobStore

            received_ts = {r["sop_uid"]: r["transfer_syntax"] for r in JobStore(node.db_path).instances()}
            assert received_ts[str(sources["jpeg2000"].SOPInstanceUID)] == "1.2.840.10008.1.2.4.90"  # as sent

            from cephnode.inference.pipeline import Pipeline

            pipeline = Pipeline.load(pack, device="cpu", threads=1)
            version = pipeline.pack.version
            in_pacs = pacs.instances_by_sop_uid()
            assert len(in_pacs) == n_expected  # nothing doubled
            for variant, source in sources.items():
                src_uid = str(source.SOPInstanceUID)
                for kind in kinds:
                    assert str(derived_uid(src_uid, version, kind)) in in_pacs, (variant, kind)
                sr = pacs.dataset(in_pacs[str(derived_uid(src_uid, version, "sr"))])
                assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != source.SeriesInstanceUID
                assert sr.PatientID == source.PatientID
                got = sr_landmark_points(sr)

                image = read_dicom_image(source)
                direct = pipeline.run(image.pixels, pixel_spacing_mm=image.pixel_spacing_mm,
                                      patient_orientation=image.patient_orientation, name=src_uid)
                expected = {lm.name: (lm.x, lm.y) for lm in direct.landmarks if lm.available}
                assert expected, f"{variant}: direct inference found no landmark"
                assert set(got) == set(expected), variant
                for name, (x, y) in expected.items():
                    assert np.allclose(got[name], (x, y), atol=0.01), (variant, name, got[name], (x, y))
            # the source image must not come back traced in the wrong pose: mirrored and rotated
            # copies of one picture give the same anatomy, mapped into their own pixel grids
            h, w = img.shape
            plain_like = sr_landmark_points(pacs.dataset(in_pacs[str(derived_uid(
                str(sources["monochrome1"].SOPInstanceUID), version, "sr"))]))
            mirrored = sr_landmark_points(pacs.dataset(in_pacs[str(derived_uid(
                str(sources["mirrored"].SOPInstanceUID), version, "sr"))]))
            common = set(plain_like) & set(mirrored)
            assert common
            mirrored_back = np.array([(w - 1 - mirrored[n][0], mirrored[n][1]) for n in sorted(common)])
            assert np.median(np.linalg.norm(mirrored_back - np.array([plain_like[n] for n in sorted(common)]),
                                            axis=1)) < 0.05 * w

            log = node.log_text()
            assert "Test^Ceph" not in log and "CEPH-TEST-001" not in log   # no PHI in logs by default
            assert src_uid in log                                        # but UIDs are there
            assert node.terminate() == 0                                 # SIGTERM: a clean stop
            assert any(e.get("event") == "node_stopped" for e in node.log_events())


def test_results_return_to_the_sender_at_its_known_address(tmp_path, pack):
    """No destination configured: with return_to_sender the SR goes back to the AE that sent
    the image, at the address it connected from and the port configured for that AE."""
    node_port = free_port()
    lua = autoroute_lua("cephnode", skip_aets=("CEPHNODE",))
    with start_orthanc(tmp_path / "pacs", modalities={"cephnode": ("CEPHNODE", "127.0.0.1", node_port)},
                       lua=lua) as pacs:
        node = make_node(tmp_path / "node", port=node_port, pack=pack,
                         allowed_callers=[{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"],
                                           "return_port": pacs.dicom_port}],
                         extra={"return_to_sender": {"enabled": True, "kinds": ["sr"]},
                                "processing": {"outbox_kinds": ["sr"]}})
        with node:
            node.start(calling_ae="ORTHANC")
            source = dicomgen.ceph_variant(dicomgen.isbi_image("152", scale=0.4), "plain")
            sent = storescu([dicomgen.save(source, tmp_path / "in.dcm")], pacs.dicom_port, called_ae="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            status = node.wait_for(lambda s: s["jobs"] == {"done": 1}, what="the job delivered to the sender")
            assert status["deliveries"] == {"done": 1}
            ids = pacs.wait_for_instances(2)
            modalities = sorted(pacs.instance_tags(i)["Modality"] for i in ids)
            assert modalities == ["DX", "SR"]
            from cephnode.node.jobstore import JobStore

            [delivery] = JobStore(node.db_path).deliveries()
            assert (delivery["destination"], delivery["ae_title"], delivery["port"]) == (
                "sender", "ORTHANC", pacs.dicom_port)
