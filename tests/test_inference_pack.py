"""Model packs: loading, verification and the refusals that name the file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cephnode.inference import contract
from cephnode.inference.landmarks import CANONICAL_25
from cephnode.inference.pack import PUBLISHED_NAME, PackError, default_pack_dir, load_pack, write_manifest
from cephnode.inference.sessions import ModelSessions
from tests.support.standin import build_standin_pack


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    return build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small", seed=1)


@pytest.fixture
def copy(pack_dir, tmp_path):
    dst = tmp_path / "pack"
    shutil.copytree(pack_dir, dst)
    return dst


def test_loads_with_manifest_and_reports_real_providers(pack_dir):
    pack = load_pack(pack_dir)
    assert pack.name == "standin-small" and pack.version == "0.0.1"
    assert set(pack.files) == {m.key for m in contract.MODELS}
    assert pack.predicted == frozenset(CANONICAL_25)
    s = ModelSessions(pack, threads=1)
    assert set(s.providers) == set(pack.files)
    # what ONNX Runtime really gave: on this CPU host, CPU (whatever the GPU build lists)
    assert all(p and p[-1] == "CPUExecutionProvider" for p in s.providers.values())
    # input names are read from the sessions, not assumed
    assert s.io["stage1"].input_name.startswith("stage1_input_")


def test_default_pack_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CEPHNODE_MODELS", str(tmp_path))
    assert default_pack_dir() == tmp_path
    monkeypatch.delenv("CEPHNODE_MODELS")
    assert default_pack_dir().parts[-2:] == ("models", "default")


def test_missing_file_is_named(copy):
    (copy / contract.ZONE3.path).unlink()
    with pytest.raises(PackError, match="z3_mandible_contours.onnx: missing"):
        load_pack(copy)


def test_truncated_file_is_named(copy):
    p = copy / contract.STAGE1.path
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match=r"v4_stage1.onnx: truncated"):
        load_pack(copy)


def test_corrupt_file_fails_the_checksum(copy):
    p = copy / contract.PROFILE.path
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"v4_stage0_profile.onnx: corrupt: sha256"):
        load_pack(copy)


def test_corrupt_file_without_manifest_is_refused_by_onnx_runtime(copy):
    (copy / "pack.json").unlink()
    p = copy / contract.PHASE0E.path
    p.write_bytes(b"\x08\x07garbage-not-a-protobuf" * 20)
    pack = load_pack(copy)          # no manifest: nothing to compare against yet
    with pytest.raises(PackError, match="phase0e_model.onnx: not a loadable ONNX model"):
        ModelSessions(pack)


def _write_model(path, in_shape, out_shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    node = helper.make_node("Identity", ["x"], ["y"])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_wrong_shape_is_refused_naming_the_file(copy):
    # z2 must output 2 classes; give it one
    _write_model(copy / contract.ZONE2.path, (1, 1, 256, 256), (1, 1, 256, 256))
    write_manifest(copy, name="x", version="1", predicted=CANONICAL_25, rules={}, provenance={}, accuracy={})
    with pytest.raises(PackError, match=r"z2_midface_contours.onnx: output 'y' has shape \(1, 1, 256, 256\)"):
        ModelSessions(load_pack(copy))
    _write_model(copy / contract.PHASE0E.path, (1, 12), (1, 36))
    _write_model(copy / contract.ZONE2.path, (1, 1, 256, 256), (1, 2, 256, 256))
    write_manifest(copy, name="x", version="1", predicted=CANONICAL_25, rules={}, provenance={}, accuracy={})
    with pytest.raises(PackError, match=r"phase0e_model.onnx: input 'x' has shape \(1, 12\)"):
        ModelSessions(load_pack(copy))


def test_dynamic_batch_axis_is_accepted(tmp_path):
    root = build_standin_pack(tmp_path / "dyn", kind="small", dynamic_batch=True)
    s = ModelSessions(load_pack(root), threads=1)
    assert s.io["stage1"].dynamic_batch and not s.io["profile"].dynamic_batch
    assert s.run("stage1", np.zeros((2, 28, 512, 512), np.float32)).shape == (2, 25, 256, 256)


def test_published_folder_without_manifest_loads_as_published(copy):
    (copy / "pack.json").unlink()
    pack = load_pack(copy)
    assert pack.name == PUBLISHED_NAME and pack.manifest == {}
    assert pack.predicted == frozenset(CANONICAL_25) and pack.rules == {}
    assert "unvalidated" in pack.note_for("Pm") and pack.note_for("S") == ""


def test_manifest_records_predictions_rules_and_sizes(copy):
    write_manifest(copy, name="ours", version="2.0", predicted=[n for n in CANONICAL_25 if n != "Co"],
                   rules={"Prn": "Phase 0B profile geometry"}, provenance={"data": "isbi"}, accuracy={"mre_mm": 1.2})
    data = json.loads((copy / "pack.json").read_text())
    assert data["not_predicted"] == ["Co"] and data["rule_landmarks"] == {"Prn": "Phase 0B profile geometry"}
    assert "Prn" not in data["predicted_landmarks"]
    stage1 = data["files"][contract.STAGE1.path]
    assert stage1["bytes"] == (copy / contract.STAGE1.path).stat().st_size and len(stage1["sha256"]) == 64
    pack = load_pack(copy)
    assert "Co" not in pack.predicted and "Prn" not in pack.predicted and pack.rules["Prn"].startswith("Phase 0B")
    with pytest.raises(PackError, match="unknown landmark"):
        write_manifest(copy, name="x", version="1", predicted=["S", "Bogus"], rules={}, provenance={}, accuracy={})


def test_provider_choice_and_silent_fallback_is_reported(pack_dir):
    import onnxruntime as ort

    from cephnode.inference.sessions import requested_providers
    assert requested_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError):
        requested_providers("gpu-please")
    auto = requested_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    s = ModelSessions(load_pack(pack_dir), device="auto", threads=1)
    really = {p[0] for p in s.providers.values()}
    if "CUDAExecutionProvider" in ort.get_available_providers() and really == {"CPUExecutionProvider"}:
        # the GPU build is installed but could not run here: said so, not hidden
        assert s.gpu_unavailable_reason
    assert s.on_gpu == (really != {"CPUExecutionProvider"})
