"""Stage 1 as one batch in the node (issue 14): with processing.batch "on" (what "auto" does on
a GPU), a worker claims the jobs ready at once and traces them with one Stage 1 call; the
landmarks are those of the node that traces image by image."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow
N = 4


def _trace(folder, pack, files, batch: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    node = make_node(folder, port=free_port(), pack=pack, quiet_period_s=0.5,
                     allowed_callers=[{"ae_title": "MODALITY"}],
                     extra={"selection": {"min_rows": 64, "min_columns": 64},
                            "processing": {"batch": batch, "batch_size": N, "outbox_kinds": ["sr"]}})
    with node:
        node.start(calling_ae="MODALITY")
        # one study: it falls quiet once, and its N jobs are queued together
        assert storescu(files, node.port, called_ae="CEPHNODE", calling_ae="MODALITY").returncode == 0
        node.wait_for(lambda s: s["jobs"].get("done", 0) == N, what="every job done")
        events = node.log_events()
    points = {}
    for path in (folder / "data" / "outbox").rglob("result.json"):
        result = json.loads(path.read_text())
        points[result["image_name"]] = np.array(
            [(lm["x"], lm["y"]) if lm["x"] is not None else (np.nan, np.nan) for lm in result["landmarks"]], float)
    return points, events


def test_batched_stage1_in_the_node_gives_the_landmarks_of_single_runs(tmp_path, pack):
    study = generate_uid()
    files = [dicomgen.save(dicomgen.ceph_variant(dicomgen.isbi_image(f"{171 + i:03d}", scale=0.5), "plain",
                                                 study_uid=study), tmp_path / "in" / f"{i}.dcm") for i in range(N)]
    single, single_events = _trace(tmp_path / "single", pack, files, "off")
    batched, batched_events = _trace(tmp_path / "batched", pack, files, "on")

    assert not [e for e in single_events if e.get("event") in ("batch_processed", "batch_inferred")]
    (claimed,) = [e for e in batched_events if e.get("event") == "batch_processed"]
    assert claimed["size"] == N and claimed["lost"] is None
    (inferred,) = [e for e in batched_events if e.get("event") == "batch_inferred"]
    assert inferred["size"] == N and inferred["stage1_one_call"] is True

    assert len(single) == len(batched) == N and set(single) == set(batched)
    for name in single:
        a, b = single[name], batched[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        assert np.nanmax(np.abs(a - b)) < 1e-3, (name, np.nanmax(np.abs(a - b)))
