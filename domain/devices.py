"""Where inference may run, by the names admins and the command line use. auto takes TensorRT
or CUDA when ONNX Runtime really loads them, else the CPU (inference.sessions)."""
from __future__ import annotations

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "tensorrt")
