"""ONNX Runtime sessions for a model pack: created once, shape-checked, reused.

onnxruntime-gpu lists CUDA/TensorRT as "available" even on a host without a GPU and then
silently falls back to CPU, so we always report session.get_providers() per model: that is
what really runs. InferenceSession.run is thread-safe, so one ModelSessions can serve
several worker threads.

On CUDA/TensorRT every network runs through IO binding: the input is copied once into a
device buffer, the output is written into a preallocated device buffer of the known shape,
and exactly one copy comes back to the host. The device buffers are kept per thread and per
model (so Stage 1's 28 x 512 x 512 input does not cost a device allocation per image); the
IOBinding object is made per call. What does NOT stay on the device: every Stage 0 output
(the geometry of phases 0B-0E is numpy on the host) and the Stage 1 input (the attention
maps are rendered by numpy), so each network's input goes up and its output comes down once.
On the CPU plain session.run is kept: binding measured no better there (docs/inference.md).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from cephnode.domain.devices import DEVICES
from cephnode.inference import contract
from cephnode.inference.pack import ModelPack, PackError


def requested_providers(device: str = "auto") -> list:
    """Execution providers to ask for, most preferred first (CPU always last)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    avail = set(ort.get_available_providers())
    chain: list = []
    if device == "tensorrt" and "TensorrtExecutionProvider" in avail:
        # TensorRT builds an engine per model on first use (minutes): cache it between runs.
        cache = Path.home() / ".cache" / "cephnode" / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        chain.append(("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                    "trt_engine_cache_path": str(cache)}))
    if device in ("auto", "cuda", "tensorrt") and "CUDAExecutionProvider" in avail:
        chain.append("CUDAExecutionProvider")
    chain.append("CPUExecutionProvider")
    return chain


# Memory device of each execution provider's tensors (OrtValue device_type names).
PROVIDER_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda",
                   "CPUExecutionProvider": "cpu"}
IO_BINDING_MODES = ("auto", "always", "never")
# Devices on which "auto" binds. Not the CPU: there session.run already hands ONNX Runtime the
# numpy memory without a copy, and binding adds a copy in and out (measured: no gain).
AUTO_BOUND_DEVICES = frozenset({"cuda"})
_ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def binding_device(providers: Sequence[str], mode: str = "auto") -> str | None:
    """The device to bind a session's input and output to, or None for plain session.run.

    ``providers`` is what the session really got (session.get_providers()); its first entry
    runs the graph. "always" binds on any device we know (tests use it to run the CUDA code
    path on the CPU), "never" never binds, "auto" binds where it pays (CUDA, TensorRT)."""
    if mode not in IO_BINDING_MODES:
        raise ValueError(f"io_binding must be one of {IO_BINDING_MODES}, not {mode!r}")
    device = PROVIDER_DEVICE.get(providers[0]) if providers else None
    if mode == "never" or device is None:
        return None
    if mode == "always" or device in AUTO_BOUND_DEVICES:
        return device
    return None


@dataclass(frozen=True)
class BoundTarget:
    """Where one session's IO binding puts its tensors."""
    device: str                 # OrtValue device_type: "cuda" or "cpu"
    device_id: int
    input_dtype: type
    output_dtype: type | None   # None: unknown element type, ONNX Runtime allocates the output


def _device_id(sess: ort.InferenceSession) -> int:
    opts = sess.get_provider_options().get(sess.get_providers()[0], {})
    try:
        return int(opts.get("device_id", 0))
    except (TypeError, ValueError):
        return 0


@dataclass
class _Buffers:
    """One thread's device buffers for one model, reused while the batch size stays the same."""
    input_shape: tuple
    input: ort.OrtValue
    output_shape: tuple | None
    output: ort.OrtValue | None


@dataclass(frozen=True)
class IOInfo:
    input_name: str
    input_shape: tuple          # as declared; str/None for symbolic dimensions
    output_name: str
    output_shape: tuple
    dynamic_batch: bool


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _matches(declared: tuple, want: tuple) -> bool:
    if len(declared) != len(want):
        return False
    # Batch axis may be symbolic; every other axis must be the contract's number (or symbolic,
    # which we then check at run time through the output we get).
    return all(d is None or d == w for d, w in zip(declared, want))


def check_io(spec: contract.ModelSpec, sess: ort.InferenceSession, path: Path) -> IOInfo:
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1:
        raise PackError(f"{path}: expected 1 input, the model has {len(ins)} ({[i.name for i in ins]})")
    if len(outs) < 1:
        raise PackError(f"{path}: the model has no outputs")
    i_shape, o_shape = _dims(ins[0].shape), _dims(outs[0].shape)
    if not _matches(i_shape, spec.input_shape) or any(d is None for d in i_shape[1:]):
        raise PackError(f"{path}: input '{ins[0].name}' has shape {tuple(ins[0].shape)}, "
                        f"the contract needs {spec.input_shape}")
    if not any(_matches(o_shape, s) for s in spec.output_shapes):
        want = " or ".join(str(s) for s in spec.output_shapes)
        raise PackError(f"{path}: output '{outs[0].name}' has shape {tuple(outs[0].shape)}, the contract needs {want}")
    if "float" not in ins[0].type:
        raise PackError(f"{path}: input '{ins[0].name}' is {ins[0].type}, the contract needs float32")
    return IOInfo(ins[0].name, tuple(ins[0].shape), outs[0].name, tuple(outs[0].shape), i_shape[0] is None)


class ModelSessions:
    """One InferenceSession per contract model, created once."""

    def __init__(self, pack: ModelPack, *, device: str = "auto", threads: int | None = None,
                 io_binding: str = "auto"):
        self.pack = pack
        self.device = device
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.io: dict[str, IOInfo] = {}
        self.providers: dict[str, list[str]] = {}
        # Per model: where its IO binding puts tensors; models absent here use session.run.
        self.bound: dict[str, BoundTarget] = {}
        # Device buffers per thread: an OrtValue bound to a run must not be refilled by another
        # thread meanwhile, and IOBinding objects are not thread-safe.
        self._local = threading.local()
        providers = requested_providers(device)
        self.gpu_unavailable_reason = ""
        if len(providers) > 1:
            providers = self._probe(providers, pack.files[contract.PHASE0E.key])
        for spec in contract.MODELS + tuple(s for s in contract.OPTIONAL_MODELS if s.key in pack.files):
            path = pack.files[spec.key]
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads:
                opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
            # Seven sessions each keeping a growing CPU arena hold the sum of their peak
            # activations; without the arena memory goes back between runs. Measured with the
            # published-size stand-in: peak RSS ~620-810 MB instead of ~880 MB, latency unchanged
            # within noise (bench/bench_inference.py).
            opts.enable_cpu_mem_arena = False
            # ONNX Runtime's workers spin after each run waiting for more work; on a small shared
            # host they then steal the cores our own code (and the next network) needs. Measured
            # on this 2-core host under load: whole image 1.3-1.5 s without spinning vs 2.6-2.8 s
            # with it, our own code 33-37 ms vs 67-78 ms wall.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:  # ORT raises several types for unreadable models
                raise PackError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
            self.io[spec.key] = check_io(spec, sess, path)
            self.sessions[spec.key] = sess
            self.providers[spec.key] = list(sess.get_providers())
            bind_on = binding_device(self.providers[spec.key], io_binding)
            in_dtype = _ELEMENT_TYPES.get(sess.get_inputs()[0].type)
            if bind_on is not None and in_dtype is not None:
                self.bound[spec.key] = BoundTarget(bind_on, _device_id(sess), in_dtype,
                                                   _ELEMENT_TYPES.get(sess.get_outputs()[0].type))

    def _probe(self, providers: list, path: Path) -> list:
        """Open the smallest model with the GPU chain once; if ONNX Runtime fell back to CPU
        (missing CUDA libraries, no device), use the CPU alone for every model and say why,
        instead of letting each session print the same load errors."""
        ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(str(path), providers=providers)
            got = sess.get_providers()
        except Exception as exc:
            self.gpu_unavailable_reason = f"GPU providers failed: {exc}"
            return ["CPUExecutionProvider"]
        finally:
            ort.set_default_logger_severity(2)
        if got[0] == "CPUExecutionProvider":
            self.gpu_unavailable_reason = "ONNX Runtime fell back to CPU (GPU libraries or device missing)"
            return ["CPUExecutionProvider"]
        return providers

    def run(self, key: str, x: np.ndarray) -> np.ndarray:
        """Run one model on one float32 batch; returns its first output (a host array)."""
        if key in self.bound:
            return self.run_bound(key, x)
        info = self.io[key]
        out = self.sessions[key].run([info.output_name], {info.input_name: x})[0]
        return out

    def run_bound(self, key: str, x: np.ndarray) -> np.ndarray:
        """Run one model through IO binding on its device (self.bound[key]).

        The host array is copied once into this thread's device input buffer, the output is
        written on the device into this thread's preallocated buffer, and one copy of it comes
        back as a new host array (copy_outputs_to_cpu), so later calls cannot change it."""
        info, target, sess = self.io[key], self.bound[key], self.sessions[key]
        x = np.ascontiguousarray(x, dtype=target.input_dtype)
        buf = self._buffers(key, x.shape, info, target)
        buf.input.update_inplace(x)               # host -> device (a memcpy on the CPU)
        binding = sess.io_binding()                 # per call: never shared between threads
        binding.bind_ortvalue_input(info.input_name, buf.input)
        if buf.output is not None:
            binding.bind_ortvalue_output(info.output_name, buf.output)
        else:
            binding.bind_output(info.output_name, target.device, target.device_id)
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]     # device -> host, once

    def _buffers(self, key: str, shape: tuple, info: IOInfo, target: BoundTarget) -> _Buffers:
        cache = getattr(self._local, "buffers", None)
        if cache is None:
            cache = self._local.buffers = {}
        buf = cache.get(key)
        if buf is not None and buf.input_shape == shape:
            return buf
        # The output's shape is the declared one with the batch axis of this input; when any
        # other axis is symbolic (or the element type unknown) ONNX Runtime allocates it.
        out_shape = (shape[0],) + tuple(info.output_shape[1:])
        known = target.output_dtype is not None and all(isinstance(d, int) for d in out_shape)
        buf = _Buffers(
            shape,
            ort.OrtValue.ortvalue_from_shape_and_type(list(shape), target.input_dtype,
                                                      target.device, target.device_id),
            out_shape if known else None,
            ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), target.output_dtype,
                                                      target.device, target.device_id) if known else None,
        )
        cache[key] = buf                            # replaces (frees) another batch size's buffers
        return buf

    @property
    def on_gpu(self) -> bool:
        return any(p[0] != "CPUExecutionProvider" for p in self.providers.values())
