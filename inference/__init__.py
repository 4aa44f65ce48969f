"""CephTrace v4 two-stage landmark pipeline on ONNX Runtime."""
