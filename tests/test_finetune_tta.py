"""Fine-tuning starts from an exported Stage 1 exactly, test-time shifts average aligned
heatmaps, and the validation split is the train images held out of training."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cephnode.inference.pack import PackError, load_pack
from cephnode.inference.pipeline import Pipeline, _shift_into
from cephnode.models import default_pack_dir
from cephnode.training import isbi


def test_an_exported_stage1_loads_back_into_torch_unchanged(tmp_path):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from cephnode.inference import contract
    from cephnode.training import export, stage1
    from cephnode.training.nets import stage1_net

    torch.manual_seed(3)
    net = stage1_net("unet-s4-fine").eval()
    # non-trivial BatchNorm statistics, so folding them into the convolutions matters
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = export.export_model(net, contract.STAGE1, tmp_path, dynamic_batch=True)
    back = stage1_net("unet-s4-fine")
    stage1.init_from_onnx(back, path)
    stage1.freeze_batchnorm(back.train())          # as fine-tuning runs it: batch statistics unused
    x = np.random.default_rng(0).random((1, 28, 512, 512), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = back(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-4
    # a fresh network (what the loader replaced) is far from it
    with torch.no_grad():
        assert np.abs(stage1_net("unet-s4-fine").eval()(torch.from_numpy(x)).numpy() - want).max() > 1e-2
    with pytest.raises(ValueError, match="Conv nodes"):
        stage1.init_from_onnx(stage1_net("unet-s4"), path)


def test_shift_into_moves_pixels_and_zero_fills():
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6) + 1
    out = np.empty_like(x)
    _shift_into(out, x, 2, -1)
    assert (out[:, :5, 2:] == x[:, 1:, :4]).all()
    assert (out[:, :, :2] == 0).all() and (out[:, 5, :] == 0).all()
    back = np.empty_like(x)
    _shift_into(back, out, -2, 1)
    assert (back[:, 1:, :4] == x[:, 1:, :4]).all()


def _pack_copy(tmp_path, shifts):
    root = tmp_path / "pack"
    shutil.copytree(default_pack_dir(), root)
    manifest = json.loads((root / "pack.json").read_text())
    manifest["stage1_test_time_shifts"] = shifts
    (root / "pack.json").write_text(json.dumps(manifest))
    return root


def test_test_time_shifts_come_from_the_pack_and_are_checked(tmp_path):
    assert load_pack(_pack_copy(tmp_path / "a", [[4, 4], [-4, -4]])).test_time_shifts == ((4, 4), (-4, -4))
    with pytest.raises(PackError, match="even"):
        _ = load_pack(_pack_copy(tmp_path / "b", [[3, 4]])).test_time_shifts
    # the command line's --test-time-shifts obeys the same rule
    from cephnode.cli.train import _shifts

    assert _shifts("2:2,-2:-2") == ((2, 2), (-2, -2)) and _shifts("none") == () and _shifts(None) is None
    for bad in ("3:4", "66:0", "2", "a:b"):
        with pytest.raises(SystemExit, match="even values"):
            _shifts(bad)


def test_test_time_shifts_average_aligned_heatmaps():
    """A zero shift averages a pass with itself (same landmarks); real shifts change the
    heatmaps a little, never the pose or the anatomy (every point within a few mm)."""
    import cv2

    case = isbi.load_cases("test1")[0]
    img = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)
    spacing = isbi.pixel_spacing_mm()
    pipe = Pipeline.load(None, device="cpu", threads=1)
    pipe.test_time_shifts = ()
    plain = pipe.run(img, pixel_spacing_mm=spacing, orientation=(0, True))
    pipe.test_time_shifts = ((0, 0),)
    same = pipe.run(img, pixel_spacing_mm=spacing, orientation=(0, True))
    pipe.test_time_shifts = ((4, 4), (-4, -4))
    tta = pipe.run(img, pixel_spacing_mm=spacing, orientation=(0, True))
    a, b, c = (np.array([[lm.x, lm.y] for lm in r.landmarks if lm.predicted]) for r in (plain, same, tta))
    assert np.abs(a - b).max() < 1e-3
    moved = np.hypot(*(a - c).T) * spacing[0]
    assert moved.max() > 0.01, "the shifted passes changed nothing: they were not averaged in"
    assert moved.max() < 3.0


def test_val_split_is_the_last_train_images_and_never_test1():
    val = isbi.load_cases("val")
    train_ids = sorted(c.case_id for c in isbi.load_cases("train"))
    assert [c.case_id for c in val] == train_ids[-isbi.VAL_IMAGES:]
    assert not {c.case_id for c in val} & {c.case_id for c in isbi.load_cases("test1")}


def test_evaluate_says_when_a_pack_was_trained_on_the_split(tmp_path):
    """A pack that saw test1 (the shipped pack may be trained on all 300) never writes its
    test1 figure as if it were held out."""
    from cephnode.cli.main import main

    root = _pack_copy(tmp_path, [])
    manifest = json.loads((root / "pack.json").read_text())
    manifest["provenance"]["stage1_trained_on"] = ["train", "test1"]
    (root / "pack.json").write_text(json.dumps(manifest))
    out = tmp_path / "ev"
    assert main(["evaluate", "--split", "test1", "--limit", "1", "--threads", "1", "--device", "cpu",
                 "--models", str(root), "--out", str(out)]) == 0
    assert not (out / "test1.json").exists()
    assert json.loads((out / "test1-in-sample.json").read_text())["in_sample"] is True
    # a pack trained on train only (the protocol model; packs up to 1.4.0) is held out on test1
    manifest["provenance"]["stage1_trained_on"] = ["train"]
    (root / "pack.json").write_text(json.dumps(manifest))
    assert main(["evaluate", "--split", "test1", "--limit", "1", "--threads", "1", "--device", "cpu",
                 "--models", str(root), "--out", str(out)]) == 0
    assert json.loads((out / "test1.json").read_text())["in_sample"] is False


def test_the_node_config_can_turn_the_packs_test_time_shifts_off(tmp_path):
    from cephnode.config.schema import NodeConfig
    from cephnode.node.service import load_pipeline

    root = _pack_copy(tmp_path, [[2, 2], [-2, -2]])
    on = NodeConfig.model_validate({"processing": {"models_dir": str(root), "device": "cpu"}})
    off = NodeConfig.model_validate({"processing": {"models_dir": str(root), "device": "cpu",
                                                    "test_time_shifts": "none"}})
    assert load_pipeline(on).test_time_shifts == ((2, 2), (-2, -2))
    assert load_pipeline(off).test_time_shifts == ()
