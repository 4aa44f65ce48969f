"""The committed default pack: contract shapes (loaded the way the node loads it), the manifest's
honesty about what is predicted, size, and the exporter itself."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cephnode.inference import contract
from cephnode.domain.landmarks import ISBI_19, UNLABELLED
from cephnode.inference.pack import default_pack_dir, load_pack
from cephnode.inference.sessions import ModelSessions


@pytest.fixture(scope="module")
def pack():
    return load_pack(default_pack_dir())


def test_default_pack_obeys_the_contract_shapes(pack):
    sessions = ModelSessions(pack, device="cpu", threads=1)
    for spec in contract.MODELS:
        io = sessions.io[spec.key]
        assert tuple(d if isinstance(d, int) else 1 for d in io.input_shape) == spec.input_shape
        assert tuple(d if isinstance(d, int) else 1 for d in io.output_shape) == spec.output_shapes[0]
    assert sessions.io["stage1"].dynamic_batch  # lets a GPU host batch Stage 1


def test_manifest_predicts_only_what_the_data_labels(pack):
    assert pack.predicted == frozenset(ISBI_19)
    assert set(pack.rules) == {"Prn"}
    assert set(pack.manifest["not_predicted"]) == set(UNLABELLED)
    prov = pack.manifest["provenance"]
    assert "001-150" in prov["split"] and prov["stage1"]["epochs"] > 0
    acc = pack.manifest["accuracy"]
    assert acc and 0.0 < acc["mre_mm"] < 10.0 and "test1" in acc["benchmark"]
    # a pack that saw test1 carries a held-out figure from elsewhere and says whose
    if "test1" in prov.get("stage1_trained_on", ["train"]):
        assert "protocol" in acc["model"] and prov["protocol_model"]["test1_mre_mm"] == acc["mre_mm"]
        assert "all 300" not in prov["protocol_model"]["split"] and "held out" in prov["protocol_model"]["split"]


def test_pack_is_small(pack):
    total = sum(p.stat().st_size for p in pack.root.rglob("*") if p.is_file())
    assert total <= 60 * 1024 * 1024


def test_stage1_runs_batched_and_returns_heatmaps(pack):
    sess = ort.InferenceSession(str(pack.files["stage1"]), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 28, 512, 512), np.float32)
    x[:, :3] = 0.5
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    # A float32 sigmoid can round to 1 + one ulp; the pipeline clamps confidences to [0, 1].
    one_ulp = float(np.finfo(np.float32).eps)
    assert y.shape == (2, 25, 256, 256) and y.min() >= 0.0 and y.max() <= 1.0 + one_ulp
    np.testing.assert_allclose(y[0], y[1], atol=1e-5)


def test_phase0e_maps_anchors_into_the_image(pack):
    sess = ort.InferenceSession(str(pack.files["phase0e"]), providers=["CPUExecutionProvider"])
    # mean ISBI train anchors (x/W, y/H, face left): S N Me ANS Go Pog Prn
    a = np.array([[0.58, 0.43, 0.28, 0.40, 0.33, 0.85, 0.27, 0.60, 0.62, 0.72, 0.30, 0.83, 0.15, 0.55]], np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: a})
    assert y.shape == (1, 36) and np.all((y > 0.0) & (y < 1.0))


def test_exporter_writes_contract_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    from cephnode.training.export import export_model
    from cephnode.training.nets import zone_net

    torch.manual_seed(0)
    path = export_model(zone_net(3), contract.ZONE3, tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, 256, 256), np.float32)})
    assert y.shape == (1, 3, 256, 256)


def test_fine_stage1_exports_with_the_contract_shapes_and_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from cephnode.training.export import export_model
    from cephnode.training.nets import stage1_net

    torch.manual_seed(0)
    net = stage1_net("unet-s4-fine").eval()
    path = export_model(net, contract.STAGE1, tmp_path, dynamic_batch=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 28, 512, 512), dtype=np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (2, 25, 256, 256)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, want, atol=1e-4)
