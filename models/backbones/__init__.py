"""Backbones: each maps images (B, 3, H, W) to {"res2".."res5"} at strides 4/8/16/32 and exposes
``out_channels`` / ``out_strides`` dicts keyed by those names."""
from .resnet import ResNetBackbone
from .swin import SwinBackbone
from .tiny import TinyBackbone

__all__ = ["ResNetBackbone", "SwinBackbone", "TinyBackbone"]
