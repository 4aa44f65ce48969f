"""Stand-in CephTrace v4 model packs, generated with the onnx package (opset 14).

Two kinds, both with the contract's exact input/output shapes:

* ``small``: tiny, deterministic networks so tests run fast. They are not random noise:
  the profile net and the zone nets threshold a blurred copy of their input (so on a real
  radiograph the "profile" is the head silhouette and the "contours" follow bright bone),
  the 0E net is a fixed linear map, and Stage 1 echoes its 25 attention maps (average-pooled
  to 256), so its heatmap peaks sit exactly where the priors put them. That makes end-to-end
  answers predictable (e.g. orientation tests can compare mapped-back points).
* ``published``: random weights with the published sizes (Stage 1 an HRNet-W32-class net of
  ~30M parameters / ~120 MB, U-Nets of ~6.7M parameters / ~27 MB) for the benchmark only.
  A thresholding branch is added to each Stage 0 output so that every phase has something
  to work on and the benchmark times the whole pipeline, not an early failure.

Input names are deliberately unusual and differ per model: the pipeline must read them from
the session. Generate "published" packs under ~/.cache/cephnode, never inside the repository.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cephnode.inference import contract

OPSET = 14


class _Graph:
    """Minimal helper that accumulates ONNX nodes and initialisers."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, arr: np.ndarray, stem: str = "c") -> str:
        nm = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
             weight: np.ndarray | None = None, bias: np.ndarray | None = None, gain: float = 1.0) -> str:
        if weight is None:
            std = gain * np.sqrt(2.0 / (cin * k * k))
            weight = (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
        if bias is None:
            bias = np.zeros(cout, np.float32)
        pad = k // 2
        return self.op("Conv", [x, self.const(weight.astype(np.float32), "w"), self.const(bias.astype(np.float32), "b")],
                       kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def conv_relu(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        return self.relu(self.conv(x, cin, cout, k, stride))

    def upsample2(self, x: str) -> str:
        scales = self.const(np.array([1, 1, 2, 2], np.float32), "scales")
        return self.op("Resize", [x, "", scales], mode="linear", coordinate_transformation_mode="half_pixel")

    def maxpool2(self, x: str) -> str:
        return self.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def threshold_logits(self, x: str, cout: int, thresholds: np.ndarray, gain: float = 25.0) -> str:
        """Logits gain * (blur5x5(x) - t_c): positive where the blurred input exceeds t_c."""
        w = np.full((cout, 1, 5, 5), gain / 25.0, np.float32)
        b = (-gain * np.asarray(thresholds, np.float32)).astype(np.float32)
        return self.conv(x, 1, cout, k=5, weight=w, bias=b)


def _save(g: _Graph, path: Path, in_name: str, in_shape, out: str, out_shape, *, dynamic_batch=False) -> None:
    in_dims = list(in_shape)
    out_dims = list(out_shape)
    if dynamic_batch:
        in_dims[0] = "batch"
        out_dims[0] = "batch"
    final = g.op("Identity", [out], stem="output")
    graph = helper.make_graph(
        g.nodes, path.stem,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, out_dims)],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cephnode-standin")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


# ---- small, deterministic stand-ins ------------------------------------------------------

PROFILE_THRESHOLD = 0.12   # grey level (0..1) above which the small profile net calls a pixel "head"


def _profile_logits(g: _Graph, x: str, two_channel: bool) -> str:
    fg = g.threshold_logits(x, 1, np.array([PROFILE_THRESHOLD], np.float32))
    if not two_channel:
        return fg
    # softmax-style pair: channel 0 = background score, channel 1 = foreground score
    bg = g.op("Neg", [fg])
    return g.op("Concat", [bg, fg], axis=1)


def _small_profile(g: _Graph, x: str, two_channel: bool) -> str:
    return g.op("Sigmoid", [_profile_logits(g, x, two_channel)])


def _small_zone(g: _Graph, x: str, n_classes: int, seed_shift: float) -> str:
    # Bright bone after CLAHE; each class a slightly different threshold so masks differ.
    t = 0.55 + 0.08 * np.arange(n_classes, dtype=np.float32) + seed_shift
    return g.threshold_logits(x, n_classes, t)


def _small_phase0e(g: _Graph, x: str, rng: np.random.Generator) -> str:
    # Every derived point = mean of the anchors plus a fixed offset: a linear map, like a
    # (badly) trained MLP, clipped into the image.
    w = np.zeros((14, 36), np.float32)
    w[0::2, 0::2] = 1.0 / 7.0
    w[1::2, 1::2] = 1.0 / 7.0
    b = (rng.uniform(-0.15, 0.15, 36)).astype(np.float32)
    y = g.op("Gemm", [x, g.const(w, "w"), g.const(b, "b")])
    return g.op("Clip", [y, g.const(np.array(0.02, np.float32)), g.const(np.array(0.98, np.float32))])


def _small_stage1(g: _Graph, x: str) -> str:
    pooled = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    starts = g.const(np.array([3], np.int64))
    ends = g.const(np.array([28], np.int64))
    axes = g.const(np.array([1], np.int64))
    return g.op("Slice", [pooled, starts, ends, axes])


# ---- published-size stand-ins -------------------------------------------------------------

UNET_CHANNELS = (16, 32, 64, 128, 256, 464)


def _unet(g: _Graph, x: str, cout: int, chans=UNET_CHANNELS) -> str:
    """A 5-level U-Net: ~6.8M parameters (~27 MB), ~15 GMAC at 512 x 512, most weights in the
    deep levels, the way the published card's sizes and CPU timings suggest."""
    skips = []
    h, cin = x, 1
    for i, c in enumerate(chans):
        h = g.conv_relu(h, cin, c)
        h = g.conv_relu(h, c, c)
        cin = c
        if i < len(chans) - 1:
            skips.append((h, c))
            h = g.maxpool2(h)
    for skip, c in reversed(skips):
        h = g.upsample2(h)
        h = g.conv_relu(h, cin, c, k=1)
        h = g.op("Concat", [h, skip], axis=1)
        h = g.conv_relu(h, 2 * c, c)
        h = g.conv_relu(h, c, c)
        cin = c
    return g.conv(h, cin, cout, k=1, gain=0.1)


def _hrnet_like(g: _Graph, x: str) -> str:
    """An HRNet-W32-class multi-resolution net: ~30M parameters, output at 1/2 resolution."""
    h = g.conv_relu(x, 28, 32, stride=2)            # 256
    h = g.conv_relu(h, 32, 64, stride=2)            # 128
    hi = g.conv_relu(h, 64, 32)                     # high-resolution branch, width 32
    for _ in range(3):
        hi = g.conv_relu(hi, 32, 32)
    m = g.conv_relu(h, 64, 64, stride=2)            # 64
    for _ in range(3):
        m = g.conv_relu(m, 64, 64)
    lo = g.conv_relu(m, 64, 128, stride=2)          # 32
    for _ in range(3):
        lo = g.conv_relu(lo, 128, 128)
    deep = g.conv_relu(lo, 128, 512, stride=2)      # 16: most parameters live here, as in HRNet's 4th stage
    for _ in range(12):
        deep = g.conv_relu(deep, 512, 512)
    deep = g.conv_relu(deep, 512, 128, k=1)
    lo = g.op("Add", [lo, g.upsample2(deep)])
    m = g.op("Add", [m, g.upsample2(g.conv_relu(lo, 128, 64, k=1))])
    hi = g.op("Add", [hi, g.upsample2(g.conv_relu(m, 64, 32, k=1))])
    hi = g.upsample2(hi)                            # 256
    return g.op("Sigmoid", [g.conv(hi, 32, 25, k=1, gain=0.1)])


def build_standin_pack(dest: Path, *, kind: str = "small", seed: int = 0,
                       profile_two_channel: bool = False, dynamic_batch: bool = False,
                       manifest: bool = True) -> Path:
    """Write the seven contract files (and, by default, a pack.json) under ``dest``; return ``dest``."""
    if kind not in ("small", "published"):
        raise ValueError(f"unknown stand-in kind {kind!r}")
    dest = Path(dest)
    rng = np.random.default_rng(seed)
    shift = float(rng.uniform(-0.03, 0.03))
    for i, spec in enumerate(contract.MODELS):
        g = _Graph(rng)
        in_name = f"{spec.key}_input_{seed}_{i}"     # unusual on purpose: read it from the session
        out_shape = spec.output_shapes[0]
        if spec is contract.PROFILE:
            if profile_two_channel:
                out_shape = spec.output_shapes[1]
            if kind == "small":
                out = _small_profile(g, in_name, profile_two_channel)
            else:
                cout = 2 if profile_two_channel else 1
                logits = g.op("Add", [_unet(g, in_name, cout), _profile_logits(g, in_name, profile_two_channel)])
                out = g.op("Sigmoid", [logits])
        elif spec.phase == "0C":
            n = len(spec.classes)
            if kind == "small":
                out = _small_zone(g, in_name, n, shift)
            else:
                t = 0.55 + 0.08 * np.arange(n, dtype=np.float32) + shift
                out = g.op("Add", [_unet(g, in_name, n), g.threshold_logits(in_name, n, t)])
        elif spec is contract.PHASE0E:
            if kind == "small":
                out = _small_phase0e(g, in_name, rng)
            else:
                h = g.relu(g.op("Gemm", [in_name, g.const((rng.standard_normal((14, 256)) * 0.3).astype(np.float32)),
                                         g.const(np.zeros(256, np.float32))]))
                h = g.relu(g.op("Gemm", [h, g.const((rng.standard_normal((256, 256)) * 0.09).astype(np.float32)),
                                         g.const(np.zeros(256, np.float32))]))
                out = g.op("Sigmoid", [g.op("Gemm", [h, g.const((rng.standard_normal((256, 36)) * 0.05).astype(np.float32)),
                                                     g.const(np.zeros(36, np.float32))])])
        else:
            out = _small_stage1(g, in_name) if kind == "small" else _hrnet_like(g, in_name)
        _save(g, dest / spec.path, in_name, spec.input_shape, out, out_shape,
              dynamic_batch=dynamic_batch and spec is contract.STAGE1)
    if manifest:
        from cephnode.inference.pack import write_manifest
        from cephnode.inference.landmarks import CANONICAL_25
        write_manifest(dest, name=f"standin-{kind}", version=f"0.0.{seed}", predicted=CANONICAL_25,
                       rules={}, provenance={"generator": "tests/support/standin.py", "kind": kind, "seed": seed},
                       accuracy={})
    return dest


def published_standin_dir(seed: int = 0) -> Path:
    """Where the benchmark keeps its published-size stand-in (outside the repository)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cephnode" / f"standin-published-{seed}"


def ensure_published_standin(seed: int = 0) -> Path:
    dest = published_standin_dir(seed)
    if not (dest / "pack.json").exists():
        build_standin_pack(dest, kind="published", seed=seed)
    return dest


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else published_standin_dir()
    kind = sys.argv[2] if len(sys.argv) > 2 else "published"
    build_standin_pack(out, kind=kind)
    print(json.dumps({"pack": str(out), "files": sorted(str(p.relative_to(out)) for p in out.rglob("*.onnx"))}))
