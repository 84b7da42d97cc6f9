"""Swin Transformer backbone as Mask2Former's ``D2SwinTransformer`` (Swin-L for CTVIS).

Patch embedding (4x4 conv + LayerNorm), four stages of (shifted-)window attention blocks with a
relative position bias, patch merging between stages, one LayerNorm per output stage.
Inputs whose token grid is not a multiple of the window are zero-padded *after* ``norm1``
inside each block, and the shifted-window mask is built on the padded grid, exactly as the
original does (so the padded tokens take part in attention as keys).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) int64 index into the (2w-1)^2 bias table, N = w*w, the standard Swin layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    relative = relative + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B*nW, w*w, C), windows in row-major order per image."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """(B*nW, w*w, C) -> (B, Hp, Wp, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(
    padded_height: int, padded_width: int, window_size: int, shift: int, device: torch.device
) -> torch.Tensor:
    """(nW, N, N) additive mask: 0 inside a region, -100 between tokens that the cyclic shift
    brought together from different regions (three bands per axis, as the original)."""

    def bands(length: int) -> torch.Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window_size).long() + (index >= length - shift).long()

    region = bands(padded_height)[:, None] * 3 + bands(padded_width)[None, :]  # (Hp, Wp)
    region = window_partition(region[None, :, :, None].float(), window_size).squeeze(-1)  # (nW, N)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """windows (B*nW, N, C); shift_mask (nW, N, N) or None. Returns (B*nW, N, C)."""
        num_windows_total, tokens, channels = windows.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(windows).view(num_windows_total, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, C/heads)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if shift_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype))
        else:
            # (B, nW, heads, N, C/heads) with the (nW, heads, N, N) bias+mask broadcast over B
            # instead of materialising it for every image
            num_windows = shift_mask.shape[0]
            split = (num_windows_total // num_windows, num_windows, self.num_heads, tokens, head_dim)
            additive = (bias.unsqueeze(0) + shift_mask.unsqueeze(1).to(bias.dtype)).to(q.dtype)
            out = F.scaled_dot_product_attention(q.view(split), k.view(split), v.view(split), attn_mask=additive)
            out = out.view(num_windows_total, self.num_heads, tokens, head_dim)
        out = out.transpose(1, 2).reshape(num_windows_total, tokens, channels)
        return self.proj(out)


class SwinMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, qkv_bias: bool, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C)."""
        batch, _, channels = x.shape
        w = self.window_size
        shortcut = x
        x = self.norm1(x).view(batch, height, width, channels)
        pad_bottom = (w - height % w) % w
        pad_right = (w - width % w) % w
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
        padded_height, padded_width = height + pad_bottom, width + pad_right
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, w), shift_mask if self.shift > 0 else None)
        x = window_reverse(windows, w, padded_height, padded_width)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(batch, height * width, channels)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (zero-padding odd sizes) -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        if height % 2 == 1 or width % 2 == 1:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # order (even row, even col), (odd, even), (even, odd), (odd, odd) as the original
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.view(batch, -1, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_paths: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift, mlp_ratio, qkv_bias, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        w = self.window_size
        padded_height = -(-height // w) * w
        padded_width = -(-width // w) * w
        mask = shifted_window_mask(padded_height, padded_width, w, self.shift, x.device)
        for block in self.blocks:
            x = block(x, height, width, mask)
        return x


class SwinBackbone(nn.Module):
    """images (B, 3, H, W) -> {"res2".."res5"} at strides 4/8/16/32 with C, 2C, 4C, 8C channels."""

    feature_names = ("res2", "res3", "res4", "res5")

    def __init__(
        self,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_size: int = 4,
        drop_path_rate: float = 0.3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages, got depths={tuple(depths)} num_heads={tuple(num_heads)}")
        self.patch_size = patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        # stochastic depth grows linearly over all blocks (float32 linspace, as the original)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.out_norms = nn.ModuleList()
        self.out_channels: Dict[str, int] = {}
        self.out_strides: Dict[str, int] = {}
        start = 0
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            self.stages.append(
                SwinStage(
                    dim, depth, num_heads[i], window_size, mlp_ratio, qkv_bias,
                    rates[start:start + depth], downsample=i < len(depths) - 1,
                )
            )
            self.out_norms.append(nn.LayerNorm(dim))
            self.out_channels[self.feature_names[i]] = dim
            self.out_strides[self.feature_names[i]] = patch_size * 2**i
            start += depth

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"SwinBackbone expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        p = self.patch_size
        height, width = images.shape[-2:]
        x = F.pad(images, (0, (p - width % p) % p, 0, (p - height % p) % p))
        x = self.patch_embed.proj(x)  # (B, C, H/4, W/4)
        height, width = x.shape[-2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        outputs = {}
        for i, stage in enumerate(self.stages):
            x = stage(x, height, width)
            out = self.out_norms[i](x)
            outputs[self.feature_names[i]] = (
                out.view(-1, height, width, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            )
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return outputs

