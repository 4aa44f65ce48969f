"""ONNX Runtime sessions for a model pack: created once, shape-checked, reused.

onnxruntime-gpu lists CUDA/TensorRT as "available" even on a host without a GPU and then
silently falls back to CPU, so we always report session.get_providers() per model: that is
what really runs. InferenceSession.run is thread-safe, so one ModelSessions can serve
several worker threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference import contract
from inference.pack import ModelPack, PackError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")


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

    def __init__(self, pack: ModelPack, *, device: str = "auto", threads: int | None = None):
        self.pack = pack
        self.device = device
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.io: dict[str, IOInfo] = {}
        self.providers: dict[str, list[str]] = {}
        providers = requested_providers(device)
        self.gpu_unavailable_reason = ""
        if len(providers) > 1:
            providers = self._probe(providers, pack.files[contract.PHASE0E.key])
        for spec in contract.MODELS:
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
        """Run one model on one float32 batch; returns its first output."""
        info = self.io[key]
        out = self.sessions[key].run([info.output_name], {info.input_name: x})[0]
        return out

    @property
    def on_gpu(self) -> bool:
        return any(p[0] != "CPUExecutionProvider" for p in self.providers.values())
