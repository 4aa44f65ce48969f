"""Compact networks sized for CPU training, each obeying the CephTrace v4 contract's shapes.

The contract fixes input and output shapes, not the backbone (the published Stage 1 is an
HRNet-W32 of ~32M parameters; far beyond a 2-core CPU). Every network here reaches its
working resolution with strided convolutions and returns to the contract's output size by a
bilinear upsample inside the graph, so the exported ONNX files take and give exactly the
contract's tensors.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Block(nn.Module):
    """Two 3x3 conv-BN-ReLU with a residual path (1x1 when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class UNet(nn.Module):
    """A small U-Net: strided stem down by `stem_stride`, `len(widths)` scales, bilinear back up.

    in_size -> in_size/stem_stride (first width) -> ... ; decoder adds the skips; the head is
    upsampled bilinearly to `out_size`.
    """

    def __init__(self, in_ch: int, out_ch: int, widths: tuple[int, ...], stem_stride: int, out_size: int,
                 sigmoid: bool = False, fine_width: int = 0):
        super().__init__()
        stem: list[nn.Module] = []
        c = in_ch
        s = stem_stride
        first = True
        while s > 1:
            w = widths[0] if s == 2 else max(8, widths[0] // 2)
            stem.append(conv_bn(c, w, 2))
            c = w
            s //= 2
            first = False
        if first:
            stem.append(conv_bn(c, widths[0]))
            c = widths[0]
        self.stem = nn.Sequential(*stem)
        self.enc = nn.ModuleList()
        for i, w in enumerate(widths):
            self.enc.append(Block(c, w))
            c = w
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.dec.append(Block(c + w, w))
            c = w
        # Optional fine stage: one more decoder block at the first stem conv's resolution (in/2),
        # fed by that conv's features, so the head sees detail the strided stem threw away.
        self.fine = None
        if fine_width:
            if stem_stride < 4:
                raise ValueError("a fine stage needs a stem of stride >= 4")
            self.fine = Block(c + self.stem[0][0].out_channels, fine_width)
            c = fine_width
        self.head = nn.Conv2d(c, out_ch, 1)
        self.out_size = out_size
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.stem[0](x)
        x = self.stem[1:](half)
        skips = []
        for i, blk in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = blk(x)
            skips.append(x)
        for blk, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([x, skip], 1))
        if self.fine is not None:
            x = F.interpolate(x, size=half.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fine(torch.cat([x, half], 1))
        x = self.head(x)
        if x.shape[-1] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x) if self.sigmoid else x


class AnchorMLP(nn.Module):
    """Phase 0E: 7 anchors (x/W, y/H) -> 18 derived points (x/W, y/H)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(14, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 36))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Predict offsets from the anchors' centroid so the net learns shape, not position.
        return self.net(x) + 0.5


STAGE1_ARCHS = ("unet-s4", "unet-s4-fine")


def stage1_net(arch: str) -> UNet:
    """(B,28,512,512) -> (B,25,256,256) sigmoid heatmaps, peak ~1.

    unet-s4: the encoder and decoder work at 128 (stem stride 4); heatmaps are upsampled to 256.
    unet-s4-fine: the same, plus a decoder block at 256 on the stem's stride-2 features, so the
    heatmaps are predicted at the contract's output resolution instead of interpolated to it.
    """
    if arch not in STAGE1_ARCHS:
        raise ValueError(f"unknown Stage 1 architecture {arch!r}; known: {', '.join(STAGE1_ARCHS)}")
    return UNet(28, 25, (32, 48, 64, 96, 128), stem_stride=4, out_size=256, sigmoid=True,
                fine_width=24 if arch == "unet-s4-fine" else 0)


def profile_net() -> UNet:
    """(1,1,512,512) -> (1,1,512,512) sigmoid probability of facial soft tissue."""
    return UNet(1, 1, (12, 16, 24, 32), stem_stride=4, out_size=512, sigmoid=True)


def zone_net(n_classes: int) -> UNet:
    """(1,1,256,256) -> (1,n,256,256) logits of thick contour lines."""
    return UNet(1, n_classes, (12, 16, 24, 32), stem_stride=2, out_size=256, sigmoid=False)
