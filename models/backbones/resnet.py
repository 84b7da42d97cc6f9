"""ResNet-50 exactly as detectron2's ``build_resnet_backbone`` builds it for Mask2Former.

Basic stem (7x7/2 conv, FrozenBN, ReLU, 3x3/2 max-pool) and four stages of bottleneck blocks
with the stride in the 3x3 conv (``STRIDE_IN_1X1: False``), all norms FrozenBN (eps 1e-5), a
projection shortcut (1x1 conv + FrozenBN) wherever the channels or the stride change.
Outputs ``res2..res5`` at strides 4/8/16/32.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import FrozenBatchNorm2d


class BasicStem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.norm(self.conv(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1, each followed by FrozenBN; ReLU after the sum."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.has_projection = in_channels != out_channels
        if self.has_projection:
            self.shortcut_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
            self.shortcut_norm = FrozenBatchNorm2d(out_channels)
        elif stride != 1:
            raise ValueError("a stride without a channel change has no shortcut projection in detectron2's ResNet")
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False)
        self.norm1 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.norm2 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.norm3 = FrozenBatchNorm2d(out_channels)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.norm1(self.conv1(x)))
        out = F.relu_(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        shortcut = self.shortcut_norm(self.shortcut_conv(x)) if self.has_projection else x
        return F.relu_(out + shortcut)


class ResNetBackbone(nn.Module):
    """images (B, 3, H, W) -> {"res2": (B, 4*w, H/4, W/4), ..., "res5": (B, 32*w, H/32, W/32)}
    with w = ``res2_out_channels / 4``-wide bottlenecks doubling per stage (R50: 256..2048)."""

    feature_names = ("res2", "res3", "res4", "res5")

    def __init__(
        self,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        blocks_per_stage: Sequence[int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage needs 4 entries (res2..res5), got {tuple(blocks_per_stage)}")
        self.stem = BasicStem(3, stem_out_channels)
        in_channels = stem_out_channels
        out_channels = res2_out_channels
        bottleneck = res2_out_channels // 4
        self.out_channels: Dict[str, int] = {}
        self.out_strides: Dict[str, int] = {}
        for stage_index, num_blocks in enumerate(blocks_per_stage):
            name = self.feature_names[stage_index]
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(
                    BottleneckBlock(in_channels, bottleneck, out_channels, first_stride if block_index == 0 else 1)
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_channels
            self.out_strides[name] = 4 * 2**stage_index
            out_channels *= 2
            bottleneck *= 2

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"ResNetBackbone expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        x = self.stem(images)
        outputs = {}
        for name in self.feature_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
