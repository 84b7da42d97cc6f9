"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

``ms_deform_attn_sample`` is the sampling core: bilinear ``F.grid_sample`` (zero padding,
``align_corners=False``) of every head's value map at every sampling location, weighted by the
attention weights and summed over levels and points. It computes what the original
``ms_deform_attn_core_pytorch`` computes (the path the released CTVIS falls back to when the CUDA
op is missing) with the same ops per output element, so its float32 results are bit-identical.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = Sequence[Tuple[int, int]]


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    query_chunk: int = 512,
) -> torch.Tensor:
    """Deformable sampling of a flattened multi-level value map.

    value:               (B, S, M, D)        S = sum_l H_l*W_l tokens, M heads, D = C/M channels
    spatial_shapes:      L pairs (H_l, W_l), in the order the levels are flattened in S
    sampling_locations:  (B, Lq, M, L, P, 2) normalised (x, y) in [0, 1], (0, 0) = top-left corner
    attention_weights:   (B, Lq, M, L, P)    softmax-normalised over L*P
    returns              (B, Lq, M*D)

    The original samples every level for all queries, stacks the samples into one
    (B*M, D, Lq, L*P) tensor, multiplies by the weights and sums the last axis. Without autograd
    this runs the very same ops on blocks of ``query_chunk`` queries (in place, into a
    preallocated output), which keeps the blocks in cache and avoids allocating the large
    stacked tensor; every output element goes through the same kernels with the same operands,
    so the result is bit-identical. With autograd the unblocked formulation is used.
    """
    batch, _, heads, head_dim = value.shape
    _, len_q, _, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {levels} sampling levels")
    # per level (B, HW, M, D) -> (B*M, D, H, W)
    value_maps = [
        level_value.flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        for level_value, (height, width) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)
    ]
    # grid_sample's [-1, 1] convention; (B, Lq, M, L, P, 2) -> (B*M, Lq, L, P, 2)
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)
    # (B, Lq, M, L, P) -> (B*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, len_q, levels * points)

    def weighted_samples(start: int, stop: int) -> torch.Tensor:
        # (B*M, D, q, L*P): per level (B*M, D, q, P), stacked level-major as the original
        sampled = [
            F.grid_sample(value_maps[level], grids[:, start:stop, level], mode="bilinear",
                          padding_mode="zeros", align_corners=False)
            for level in range(levels)
        ]
        return torch.stack(sampled, dim=-2).flatten(-2)

    needs_grad = torch.is_grad_enabled() and (
        value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
    )
    if needs_grad:
        out = (weighted_samples(0, len_q) * weights).sum(-1)
    else:
        out = value.new_empty(batch * heads, head_dim, len_q)
        for start in range(0, len_q, query_chunk):
            stop = min(start + query_chunk, len_q)
            block = weighted_samples(start, stop)
            block.mul_(weights[:, :, start:stop])
            torch.sum(block, -1, out=out[:, :, start:stop])
    return out.view(batch, heads * head_dim, len_q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """query (B, Lq, C) attends to ``num_points`` learned offsets around its reference point on
    each of ``num_levels`` feature maps, per head."""

    def __init__(self, dim: int = 256, num_levels: int = 3, num_heads: int = 8, num_points: int = 4) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's init: zero offset weights, biases pointing each head in its own
        # direction at distances 1..P, uniform attention.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """query (B, Lq, C); reference_points (B or 1, Lq, L, 2) normalised (x, y);
        input_flatten (B, S, C) with S = sum_l H_l*W_l. Returns (B, Lq, C)."""
        batch, len_q, _ = query.shape
        len_in = input_flatten.shape[1]
        if sum(h * w for h, w in spatial_shapes) != len_in:
            raise ValueError(f"spatial shapes {list(spatial_shapes)} do not cover the {len_in} input tokens")
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(input_flatten).view(batch, len_in, heads, self.dim // heads)
        offsets = self.sampling_offsets(query).view(batch, len_q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, len_q, heads, levels * points)
        weights = F.softmax(weights, -1).view(batch, len_q, heads, levels, points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
        )
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_sample(value, spatial_shapes, locations, weights))
