"""The default pack's landmark refiner in the pipeline and the node's switch for it."""
from __future__ import annotations

import cv2
import numpy as np

from cephnode.inference import contract
from cephnode.inference import refine as R
from cephnode.inference.pack import load_pack


def test_the_default_pack_refines_its_landmarks_and_can_be_told_not_to(pack):
    """The shipped pack has a refiner; it moves Stage 1's points (within its max_move) and only
    those it has a channel for; weight 0 gives Stage 1's points."""
    from cephnode.inference.pipeline import Pipeline
    from cephnode.training import isbi

    p = load_pack(pack)
    assert p.refinement is not None and contract.REFINER.key in p.files
    case = isbi.load_cases("test1")[0]
    img = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)
    pipe = Pipeline.load(pack, device="cpu", threads=1)
    refined = pipe.run(img, pixel_spacing_mm=isbi.pixel_spacing_mm())
    assert refined.timings_ms["net_refine"] > 0
    pipe.set_refine_weight(0)
    plain = pipe.run(img, pixel_spacing_mm=isbi.pixel_spacing_mm())
    assert "refine" not in plain.timings_ms
    h, w = img.shape
    # max_move is in 1024-grid pixels: at most that many grid pixels along each image axis
    bound = np.hypot(p.refinement.max_move_px * w / R.GRID, p.refinement.max_move_px * h / R.GRID)
    moved = {}
    for a, b in zip(refined.landmarks, plain.landmarks):
        if a.name in p.refinement.landmarks and a.predicted:
            moved[a.name] = float(np.hypot(a.x - b.x, a.y - b.y))
        else:                       # rule points (Prn) and unavailable landmarks stay as they were
            assert (a.x, a.y) == (b.x, b.y)
        assert a.confidence == b.confidence      # confidence stays Stage 1's (the gate's signal)
    assert len(moved) == 19 and max(moved.values()) <= bound + 1e-6
    assert sum(v > 0.05 for v in moved.values()) >= 15
    assert refined.qc.verdict == "pass"


def test_the_node_config_can_turn_the_refiner_off(pack):
    from cephnode.config.schema import NodeConfig
    from cephnode.node.service import load_pipeline

    on = NodeConfig.model_validate({"processing": {"models_dir": str(pack), "device": "cpu"}})
    off = NodeConfig.model_validate({"processing": {"models_dir": str(pack), "device": "cpu", "refine": "none"}})
    assert load_pipeline(on).refinement == load_pack(pack).refinement is not None
    assert load_pipeline(off).refinement is None


def test_warm_up_runs_every_network_once_and_quietly(pack, capsys):
    """A worker warms its sessions up before its first job: every network of the pack (the
    refiner too) has run once, and nothing is logged about the blank film it used."""
    from cephnode.inference.pipeline import Pipeline

    pipe = Pipeline.load(pack, device="cpu", threads=1)
    ran = []
    real = pipe.sessions.run
    pipe.sessions.run = lambda key, x: ran.append(key) or real(key, x)
    capsys.readouterr()
    assert pipe.warm_up() > 0
    assert {contract.STAGE1.key, contract.PROFILE.key, contract.REFINER.key} <= set(ran)
    assert "stage0_failed" not in capsys.readouterr().out
