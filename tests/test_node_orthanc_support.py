"""The Orthanc test helper itself: a real Orthanc stores what storescu sends, its REST
answers, and the auto-routing Lua forwards to a real dcmtk storescp, except from skipped AEs."""
from __future__ import annotations

import subprocess
import time

import numpy as np

from tests.support import dicomgen
from tests.support.orthanc import autoroute_lua, free_port, start_orthanc


def _storescu(calling: str, port: int, path) -> None:
    subprocess.run(["storescu", "-aet", calling, "-aec", "ORTHANC", "127.0.0.1", str(port), str(path)],
                   check=True, capture_output=True, timeout=60)


def _wait_files(folder, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.iterdir())
        if len(files) >= count:
            return files
        time.sleep(0.1)
    return sorted(folder.iterdir())


def test_orthanc_stores_answers_rest_and_autoroutes(tmp_path):
    rng = np.random.default_rng(1)
    routed = dicomgen.make_dx((rng.random((96, 96)) * 255).astype(np.uint8))
    skipped = dicomgen.make_dx((rng.random((96, 96)) * 255).astype(np.uint8))
    f1 = dicomgen.save(routed, tmp_path / "in" / "routed.dcm")
    f2 = dicomgen.save(skipped, tmp_path / "in" / "skipped.dcm")
    sink = tmp_path / "sink"
    sink.mkdir()
    sink_port = free_port()
    scp = subprocess.Popen(["storescp", "-aet", "SINK", "-od", str(sink), str(sink_port)])
    try:
        lua = autoroute_lua("sink", skip_aets=("NOROUTE",))
        with start_orthanc(tmp_path / "pacs", modalities={"sink": ("SINK", "127.0.0.1", sink_port)}, lua=lua) as pacs:
            _storescu("MODALITY", pacs.dicom_port, f1)
            _storescu("NOROUTE", pacs.dicom_port, f2)
            ids = pacs.wait_for_instances(2)
            by_uid = pacs.instances_by_sop_uid()
            assert set(by_uid) == {routed.SOPInstanceUID, skipped.SOPInstanceUID}
            back = pacs.dataset(by_uid[routed.SOPInstanceUID])
            assert np.array_equal(back.pixel_array, routed.pixel_array)
            assert pacs.instance_tags(ids[0])["Modality"] == "DX"
            _wait_files(sink, 1)
            time.sleep(1.0)  # give a wrongly routed second instance the time to arrive too
            files = sorted(sink.iterdir())
            assert [p.name.split(".", 1)[1] for p in files] == [routed.SOPInstanceUID]
        assert pacs.process.poll() is not None
    finally:
        scp.terminate()
        scp.wait(timeout=10)
