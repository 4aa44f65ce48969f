"""Training of the default model pack (optional 'train' extra; needs torch)."""

# Devices `cephnode train` and `ablation` accept (torch has no TensorRT); importable without torch.
TORCH_DEVICES = ("auto", "cpu", "cuda")
