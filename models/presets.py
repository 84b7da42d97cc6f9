"""Named network configurations: the released CTVIS models and a tiny one for CPU tests/demo.

Each preset is a function returning a fresh ``NetworkConfig`` (configs are frozen, so callers
derive variants with ``dataclasses.replace``). Loss and tracker settings are composed next to
these by the experiment config, not stored here.
"""
from __future__ import annotations

from .ctvis import (
    BackboneConfig,
    NetworkConfig,
    PixelDecoderConfig,
    TinyBackboneConfig,
    TransformerDecoderConfig,
)

YTVIS_NUM_CLASSES = 40  # YouTube-VIS 2019 and 2021 both have 40 categories
OVIS_NUM_CLASSES = 25


def _r50(num_classes: int) -> NetworkConfig:
    return NetworkConfig(num_classes=num_classes, backbone=BackboneConfig(kind="resnet50"))


def _swinl(num_classes: int) -> NetworkConfig:
    return NetworkConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(kind="swin_large"),
        transformer_decoder=TransformerDecoderConfig(num_queries=200),
    )


def ctvis_r50_ytvis19() -> NetworkConfig:
    return _r50(YTVIS_NUM_CLASSES)


def ctvis_r50_ytvis21() -> NetworkConfig:
    return _r50(YTVIS_NUM_CLASSES)


def ctvis_r50_ovis() -> NetworkConfig:
    return _r50(OVIS_NUM_CLASSES)


def ctvis_swinl_ytvis19() -> NetworkConfig:
    return _swinl(YTVIS_NUM_CLASSES)


def ctvis_swinl_ytvis21() -> NetworkConfig:
    return _swinl(YTVIS_NUM_CLASSES)


def ctvis_swinl_ovis() -> NetworkConfig:
    return _swinl(OVIS_NUM_CLASSES)


def tiny(num_classes: int = 3) -> NetworkConfig:
    """A few classes, 16 queries, 32-dim, 3 decoder layers: seconds per CPU training step on
    2 frames of 96x96."""
    hidden = 32
    return NetworkConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(kind="tiny", tiny=TinyBackboneConfig(channels=(16, 32, 64, 128))),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=hidden, mask_dim=hidden, num_heads=4, num_points=2, num_encoder_layers=2,
            ffn_dim=64, norm_groups=8,
        ),
        transformer_decoder=TransformerDecoderConfig(
            hidden_dim=hidden, num_queries=16, num_heads=4, ffn_dim=64, num_layers=3,
            reid_hidden_dim=hidden, num_reid_head_layers=3,
        ),
    )


PRESETS = {
    "ctvis_r50_ytvis19": ctvis_r50_ytvis19,
    "ctvis_r50_ytvis21": ctvis_r50_ytvis21,
    "ctvis_r50_ovis": ctvis_r50_ovis,
    "ctvis_swinl_ytvis19": ctvis_swinl_ytvis19,
    "ctvis_swinl_ytvis21": ctvis_swinl_ytvis21,
    "ctvis_swinl_ovis": ctvis_swinl_ovis,
    "tiny": tiny,
}


def network_preset(name: str) -> NetworkConfig:
    """The preset called ``name`` (one of ``PRESETS``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown network preset {name!r}; known: {sorted(PRESETS)}") from None


__all__ = [*PRESETS, "PRESETS", "network_preset"]
