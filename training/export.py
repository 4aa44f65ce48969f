"""Export trained networks to ONNX (opset 14) with the CephTrace v4 contract's exact shapes."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cephnode.inference import contract

OPSET = 14


def export_model(net: torch.nn.Module, spec: contract.ModelSpec, root: Path, *, dynamic_batch: bool = False) -> Path:
    out = Path(root) / spec.path
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval().cpu()
    dummy = torch.zeros(spec.input_shape, dtype=torch.float32)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(out), input_names=["input"], output_names=["output"],
                          opset_version=OPSET, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    if dynamic_batch:
        _pin_output_dims(out, spec)
    return out


def _pin_output_dims(path: Path, spec: contract.ModelSpec) -> None:
    """The tracer loses the static (25,256,256) behind the in-graph resize when the batch axis is
    dynamic; write the contract's dims back so the file declares exactly what it returns."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for d, want in zip(list(dims)[1:], spec.output_shapes[0][1:]):
        d.Clear()
        d.dim_value = want
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_pack(nets: dict[str, torch.nn.Module], root: Path) -> dict[str, Path]:
    """nets keyed by contract key (profile, z1..z4, phase0e, stage1) -> the seven files."""
    paths = {}
    for spec in contract.MODELS:
        paths[spec.key] = export_model(nets[spec.key], spec, root, dynamic_batch=(spec.key == "stage1"))
    return paths
