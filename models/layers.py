"""Small building blocks shared by the backbones, the pixel decoder and the transformer decoder.

Everything here is plain PyTorch and works on any device and dtype (CPU, CUDA, under autocast).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all four stored as buffers.

    This is how detectron2 ships ResNet backbones (``NORM: FrozenBN``): the buffers are part of
    the state_dict but never trained. ``F.batch_norm(training=False)`` gives the same numbers as
    the original, which calls it with the same arguments.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W). Under autocast the buffers stay float32; cast to the input dtype so a
        # half-precision activation does not hit a dtype mismatch inside batch_norm.
        return F.batch_norm(
            x,
            self.running_mean.to(x.dtype),
            self.running_var.to(x.dtype),
            self.weight.to(x.dtype),
            self.bias.to(x.dtype),
            training=False,
            momentum=0.0,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={num_layers}")
        in_dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        out_dims = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(in_dims, out_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


class FeedForward(nn.Module):
    """linear1 -> ReLU -> (dropout) -> linear2; the residual and the norm live in the caller."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place ReLU: saves a fresh (tokens x hidden) buffer; autograd-safe after a linear
        return self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, batch-first.

    The packed ``in_proj_weight`` (3C, C) / ``in_proj_bias`` (3C) and ``out_proj`` match the
    official checkpoints, but the computation runs through ``F.scaled_dot_product_attention``
    (no averaged attention-weight matrix is built, unlike ``nn.MultiheadAttention`` with its
    default ``need_weights=True``).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """query (B, Lq, C), key/value (B, Lk, C); ``blocked`` (B, Lq, Lk) bool, True = may not
        attend (every row must keep at least one False). Returns (B, Lq, C)."""
        batch, len_q, dim = query.shape
        len_k = key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        head_dim = dim // self.num_heads
        # (B, L, C) -> (B, heads, L, C/heads)
        q = F.linear(query, w_q, b_q).view(batch, len_q, self.num_heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, len_k, self.num_heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, len_k, self.num_heads, head_dim).transpose(1, 2)
        allowed = None if blocked is None else ~blocked[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, len_q, dim)
        return self.out_proj(out)


class DropPath(nn.Module):
    """Stochastic depth per sample (active in training only), scaled by 1/keep_prob."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        keep = x.new_empty(shape).bernoulli_(keep_prob)
        return x * keep.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def sine_position_encoding(
    height: int,
    width: int,
    num_pos_feats: int,
    device: torch.device,
    temperature: float = 10000.0,
) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding for an unmasked (H, W) grid: (1, 2*num_pos_feats, H, W).

    Channels are [y features, x features], each interleaving sin/cos. The arithmetic follows
    the original op for op (cumulative index, divide by last + 1e-6, times 2*pi) so the float32
    values are identical; it is the same for every image, so callers expand it over the batch.
    """
    ones = torch.ones((1, height, width), dtype=torch.float32, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
