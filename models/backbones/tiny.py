"""A tiny convolutional backbone for CPU tests and the demo.

Not a published architecture: five 3x3 convs (two in the stem) with GroupNorm and ReLU that
produce ``res2..res5`` at strides 4/8/16/32 with small channel counts, so a tiny CTVIS network
trains on CPU in seconds per step.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvGNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = nn.GroupNorm(min(8, out_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class TinyBackbone(nn.Module):
    """images (B, 3, H, W) -> {"res2": (B, c0, H/4, W/4), ..., "res5": (B, c3, H/32, W/32)}."""

    feature_names = ("res2", "res3", "res4", "res5")

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"TinyBackbone needs 4 channel counts (res2..res5), got {tuple(channels)}")
        self.stem = nn.Sequential(ConvGNReLU(3, channels[0], 2), ConvGNReLU(channels[0], channels[0], 2))
        self.stages = nn.ModuleList(ConvGNReLU(channels[i - 1], channels[i], 2) for i in range(1, 4))
        self.out_channels: Dict[str, int] = dict(zip(self.feature_names, channels))
        self.out_strides: Dict[str, int] = dict(zip(self.feature_names, (4, 8, 16, 32)))

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"TinyBackbone expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        x = self.stem(images)
        outputs = {"res2": x}
        for name, stage in zip(self.feature_names[1:], self.stages):
            x = stage(x)
            outputs[name] = x
        return outputs
