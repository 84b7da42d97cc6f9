"""Mask2Former's ``MSDeformAttnPixelDecoder``.

The three coarsest backbone levels (res3..res5) are projected to ``conv_dim`` channels
(1x1 conv + GroupNorm), refined jointly by a stack of multi-scale deformable-attention encoder
layers, then an FPN step adds the finer levels (res2: lateral 1x1 conv + GN, plus the bilinearly
upsampled coarser output, then 3x3 conv + GN + ReLU). A 1x1 conv on the finest FPN output gives
the per-pixel mask features.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeedForward, sine_position_encoding
from .ms_deform_attn import MSDeformAttn, SpatialShapes


class ConvGroupNorm(nn.Module):
    """Conv (no bias) -> GroupNorm [-> ReLU], detectron2's ``Conv2d(norm=GN, activation=...)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.relu = relu
        nn.init.kaiming_uniform_(self.conv.weight, a=1)  # detectron2's c2_xavier_fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class InputProjection(nn.Module):
    """1x1 conv (with bias) -> GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.norm = nn.GroupNorm(groups, out_channels)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class DeformableEncoderLayer(nn.Module):
    """Post-norm: x = norm(x + MSDeformAttn(x + pos)); x = norm(x + FFN(x))."""

    def __init__(self, dim: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int, dropout: float) -> None:
        super().__init__()
        self.attention = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: SpatialShapes
    ) -> torch.Tensor:
        """src (B, S, C), pos (1 or B, S, C), reference_points (1, S, L, 2) -> (B, S, C)."""
        attended = self.attention(src + pos, reference_points, src, spatial_shapes)
        src = self.attention_norm(src + self.dropout(attended))
        return self.ffn_norm(src + self.dropout(self.ffn(src)))


def encoder_reference_points(spatial_shapes: SpatialShapes, device: torch.device) -> torch.Tensor:
    """(1, S, L, 2): each token's pixel centre, normalised to [0, 1] as (x, y), the same for every
    level (no padding mask, so every valid ratio is 1)."""
    per_level = []
    for height, width in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
            indexing="ij",
        )
        per_level.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
    reference = torch.cat(per_level, 0)[None]  # (1, S, 2)
    return reference[:, :, None].expand(-1, -1, len(spatial_shapes), -1)


class MSDeformAttnPixelDecoder(nn.Module):
    """features {"res2".."res5"} -> (mask_features (B, mask_dim, H/4, W/4),
    [multi-scale features (B, conv_dim, h, w) at strides 32, 16, 8]).

    ``transformer_in_features`` are the backbone levels refined by the deformable encoder; every
    finer level down to stride ``common_stride`` gets an FPN step.
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        in_strides: Mapping[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_heads: int = 8,
        num_points: int = 4,
        num_encoder_layers: int = 6,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        norm_groups: int = 32,
        transformer_in_features: Tuple[str, ...] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        num_output_levels: int = 3,
    ) -> None:
        super().__init__()
        missing = [name for name in transformer_in_features if name not in in_channels]
        if missing:
            raise ValueError(f"transformer_in_features {missing} are not backbone outputs {sorted(in_channels)}")
        # coarse-to-fine (res5 first) for the encoder, as the original orders its levels
        self.encoder_features = sorted(transformer_in_features, key=lambda n: in_strides[n], reverse=True)
        finest_encoder_stride = min(in_strides[n] for n in transformer_in_features)
        # FPN levels between the finest encoder level and common_stride, coarse-to-fine
        self.fpn_features = sorted(
            (n for n in in_channels if common_stride <= in_strides[n] < finest_encoder_stride),
            key=lambda n: in_strides[n],
            reverse=True,
        )
        expected = int(math.log2(finest_encoder_stride) - math.log2(common_stride))
        if len(self.fpn_features) != expected:
            raise ValueError(
                f"need {expected} backbone levels with strides in [{common_stride}, {finest_encoder_stride}) "
                f"for the FPN, got {self.fpn_features}"
            )
        self.num_output_levels = num_output_levels
        self.conv_dim = conv_dim

        self.input_projections = nn.ModuleList(
            InputProjection(in_channels[name], conv_dim, norm_groups) for name in self.encoder_features
        )
        num_levels = len(self.encoder_features)
        self.level_embed = nn.Parameter(torch.empty(num_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.encoder_layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, ffn_dim, num_levels, num_heads, num_points, dropout)
            for _ in range(num_encoder_layers)
        )
        for layer in self.encoder_layers:
            nn.init.xavier_uniform_(layer.ffn.linear1.weight)
            nn.init.xavier_uniform_(layer.ffn.linear2.weight)
        self.fpn_lateral = nn.ModuleDict(
            {name: ConvGroupNorm(in_channels[name], conv_dim, 1, norm_groups, relu=False) for name in self.fpn_features}
        )
        self.fpn_output = nn.ModuleDict(
            {name: ConvGroupNorm(conv_dim, conv_dim, 3, norm_groups, relu=True) for name in self.fpn_features}
        )
        self.mask_projection = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_projection.weight, a=1)
        nn.init.zeros_(self.mask_projection.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        # The deformable sampling is run in float32 (the original disables autocast here and
        # casts the backbone features with .float()).
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_float32(features)

    def _forward_float32(self, features: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        sources, positions, spatial_shapes = [], [], []
        for level, name in enumerate(self.encoder_features):
            x = features[name].float()
            projected = self.input_projections[level](x)  # (B, C, h, w)
            batch, channels, height, width = projected.shape
            spatial_shapes.append((height, width))
            sources.append(projected.flatten(2).transpose(1, 2))
            pos = sine_position_encoding(height, width, channels // 2, x.device).flatten(2).transpose(1, 2)
            positions.append(pos + self.level_embed[level].view(1, 1, -1))
        src = torch.cat(sources, 1)  # (B, S, C)
        pos = torch.cat(positions, 1)  # (1, S, C)
        reference_points = encoder_reference_points(spatial_shapes, src.device)
        for layer in self.encoder_layers:
            src = layer(src, pos, reference_points, spatial_shapes)

        outputs = [
            level.transpose(1, 2).reshape(batch, -1, h, w)
            for level, (h, w) in zip(src.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)
        ]
        for name in self.fpn_features:
            lateral = self.fpn_lateral[name](features[name].float())
            upsampled = F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(self.fpn_output[name](lateral + upsampled))
        return self.mask_projection(outputs[-1]), outputs[: self.num_output_levels]
