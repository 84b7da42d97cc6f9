"""The CTVIS network (Mask2Former + re-id head): configs, builder, and the assembled module.

``NetworkConfig`` is a frozen dataclass tree whose defaults are the released CTVIS R50
YouTube-VIS 2019 values; presets for the other released models live in ``models.presets``.
Losses and the tracker have their own configs (composed next to this one, not inside it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNetBackbone, SwinBackbone, TinyBackbone
from .frame_outputs import NetworkOutputs
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedTransformerDecoder


@dataclass(frozen=True)
class ResNetConfig:
    """detectron2 ResNet (bottleneck, FrozenBN, stride in the 3x3 conv)."""

    stem_out_channels: int = 64
    res2_out_channels: int = 256
    blocks_per_stage: Tuple[int, int, int, int] = (3, 4, 6, 3)  # R50


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer as Mask2Former's D2SwinTransformer; defaults are Swin-L (384 pretrain)."""

    embed_dim: int = 192
    depths: Tuple[int, int, int, int] = (2, 2, 18, 2)
    num_heads: Tuple[int, int, int, int] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_size: int = 4
    drop_path_rate: float = 0.3


@dataclass(frozen=True)
class TinyBackboneConfig:
    channels: Tuple[int, int, int, int] = (16, 32, 64, 128)


@dataclass(frozen=True)
class BackboneConfig:
    kind: Literal["resnet50", "swin_large", "tiny"] = "resnet50"
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)


@dataclass(frozen=True)
class PixelDecoderConfig:
    conv_dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    num_points: int = 4
    num_encoder_layers: int = 6
    ffn_dim: int = 1024  # the original hard-codes 1024 for the deformable encoder
    dropout: float = 0.0
    norm_groups: int = 32
    transformer_in_features: Tuple[str, ...] = ("res3", "res4", "res5")
    common_stride: int = 4


@dataclass(frozen=True)
class TransformerDecoderConfig:
    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 9  # the original's DEC_LAYERS (10) minus 1
    dropout: float = 0.0
    reid_hidden_dim: int = 256
    num_reid_head_layers: int = 3
    enforce_input_projection: bool = False


@dataclass(frozen=True)
class NetworkConfig:
    num_classes: int = 40
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    transformer_decoder: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    pixel_mean: Tuple[float, float, float] = (123.675, 116.280, 103.530)  # RGB
    pixel_std: Tuple[float, float, float] = (58.395, 57.120, 57.375)
    size_divisibility: int = 32


def build_backbone(config: BackboneConfig) -> nn.Module:
    if config.kind == "resnet50":
        c = config.resnet
        return ResNetBackbone(
            stem_out_channels=c.stem_out_channels,
            res2_out_channels=c.res2_out_channels,
            blocks_per_stage=c.blocks_per_stage,
        )
    if config.kind == "swin_large":
        c = config.swin
        return SwinBackbone(
            embed_dim=c.embed_dim,
            depths=c.depths,
            num_heads=c.num_heads,
            window_size=c.window_size,
            mlp_ratio=c.mlp_ratio,
            qkv_bias=c.qkv_bias,
            patch_size=c.patch_size,
            drop_path_rate=c.drop_path_rate,
        )
    if config.kind == "tiny":
        return TinyBackbone(channels=config.tiny.channels)
    raise ValueError(f"unknown backbone.kind {config.kind!r} (resnet50, swin_large, tiny)")


class CTVISNetwork(nn.Module):
    """uint8 frames -> ``preprocess`` -> normalised padded images (N, 3, Hp, Wp) -> ``forward`` ->
    per-frame predictions. N is the flattened batch of frames (B clips x T frames, clip-major)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.size_divisibility = config.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)
        self.backbone = build_backbone(config.backbone)
        p = config.pixel_decoder
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=self.backbone.out_channels,
            in_strides=self.backbone.out_strides,
            conv_dim=p.conv_dim,
            mask_dim=p.mask_dim,
            num_heads=p.num_heads,
            num_points=p.num_points,
            num_encoder_layers=p.num_encoder_layers,
            ffn_dim=p.ffn_dim,
            dropout=p.dropout,
            norm_groups=p.norm_groups,
            transformer_in_features=p.transformer_in_features,
            common_stride=p.common_stride,
        )
        d = config.transformer_decoder
        self.decoder = MaskedTransformerDecoder(
            in_channels=p.conv_dim,
            mask_dim=p.mask_dim,
            num_classes=config.num_classes,
            hidden_dim=d.hidden_dim,
            num_queries=d.num_queries,
            num_heads=d.num_heads,
            ffn_dim=d.ffn_dim,
            num_layers=d.num_layers,
            dropout=d.dropout,
            reid_hidden_dim=d.reid_hidden_dim,
            num_reid_head_layers=d.num_reid_head_layers,
            enforce_input_projection=d.enforce_input_projection,
        )

    def padded_size(self, height: int, width: int) -> Tuple[int, int]:
        """The (Hp, Wp) an (H, W) frame is padded to: each rounded up to ``size_divisibility``."""
        divisor = max(self.size_divisibility, 1)
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor

    def preprocess(self, frames: torch.Tensor | List[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """frames: uint8 (N, 3, H, W) RGB, or a list of (3, H_i, W_i) of different sizes.

        Returns images (N, 3, Hp, Wp) float32: ``(frame - mean) / std``, then zero-padded at the
        bottom/right (the padding is 0 in normalised space) up to the largest frame rounded up to
        ``size_divisibility``; and the unpadded (H_i, W_i) of each frame."""
        divisor = max(self.size_divisibility, 1)
        mean, std = self.pixel_mean, self.pixel_std
        if isinstance(frames, torch.Tensor):
            if frames.dim() != 4 or frames.shape[1] != 3:
                raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
            height, width = (int(v) for v in frames.shape[-2:])
            sizes = [(height, width)] * frames.shape[0]
            normalized = (frames.to(mean.device) - mean) / std
            padded_h, padded_w = self.padded_size(height, width)
            return F.pad(normalized, (0, padded_w - width, 0, padded_h - height), value=0.0), sizes
        if not frames:
            raise ValueError("preprocess got no frames")
        for index, frame in enumerate(frames):
            if frame.dim() != 3 or frame.shape[0] != 3:
                raise ValueError(f"frame {index} must be (3, H, W), got shape {tuple(frame.shape)}")
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in frames]
        padded_h = -(-max(h for h, _ in sizes) // divisor) * divisor
        padded_w = -(-max(w for _, w in sizes) // divisor) * divisor
        images = mean.new_zeros((len(frames), 3, padded_h, padded_w))
        for index, frame in enumerate(frames):
            h, w = sizes[index]
            images[index, :, :h, :w] = (frame.to(mean.device) - mean) / std
        return images, sizes

    def forward(
        self, images: torch.Tensor, return_intermediates: bool = False
    ) -> NetworkOutputs:
        """images (N, 3, H, W) as from ``preprocess`` -> `NetworkOutputs`: the final `FrameOutputs`
        (logits (N, Q, K+1), mask logits (N, Q, H/4, W/4), queries and re-id embeddings (N, Q, C))
        and the decoder's earlier predictions.

        With ``return_intermediates`` it also holds ``backbone_features`` {res2..res5},
        ``mask_features`` (N, mask_dim, H/4, W/4), ``multi_scale_features`` (strides 32, 16, 8)
        and ``attn_mask_logits`` (one per decoder layer), for tests and debugging."""
        features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        outputs = self.decoder(multi_scale_features, mask_features, return_attention_logits=return_intermediates)
        if return_intermediates:
            outputs.backbone_features = features
            outputs.mask_features = mask_features
            outputs.multi_scale_features = multi_scale_features
        return outputs


def build_network(config: NetworkConfig) -> CTVISNetwork:
    return CTVISNetwork(config)
