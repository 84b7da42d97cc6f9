"""Named model configurations: the released CTVIS models and a tiny one for CPU tests and the demo.

``PRESETS[name]()`` returns a fresh ``CTVISConfig`` (network, criterion, CT-CL, tracker,
inference); ``NETWORK_PRESETS[name]()`` only its ``NetworkConfig``. Configs are frozen: derive
variants with ``dataclasses.replace`` (the experiment files do this key by key).

Values are those of the released configs (``configs/{ytvis_2019,ytvis_2021,ovis}/CTVIS_*.yaml``
and their ``_base_`` files): the R50 models have 100 queries and 99 CT-CL negatives, the Swin-L
models 200 and 199; YouTube-VIS 2019/2021 have 40 classes and OVIS 25; every model tracks with
``MATCH_SCORE_THR 0.3`` and the similarity-guided memory bank, and keeps the top
``num_classes`` video instances (the released ``num_topk``). The sampling of clip frames is part
of the data config, not of the model.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict

from .criterion import CriterionConfig
from .ctcl import CTCLConfig
from .ctvis import (
    BackboneConfig,
    NetworkConfig,
    PixelDecoderConfig,
    TinyBackboneConfig,
    TransformerDecoderConfig,
)
from .model import CTVISConfig, InferenceConfig
from .tracking import TrackerConfig

YTVIS_NUM_CLASSES = 40  # YouTube-VIS 2019 and 2021 both have 40 categories
OVIS_NUM_CLASSES = 25
TINY_NUM_CLASSES = 3  # the synthetic datasets' default


# ----------------------------------------------------------------------------------- networks
def r50_network(num_classes: int) -> NetworkConfig:
    return NetworkConfig(num_classes=num_classes, backbone=BackboneConfig(kind="resnet50"))


def swinl_network(num_classes: int) -> NetworkConfig:
    return NetworkConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(kind="swin_large"),
        transformer_decoder=TransformerDecoderConfig(num_queries=200),
    )


def tiny_network(num_classes: int = TINY_NUM_CLASSES) -> NetworkConfig:
    """A few classes, 16 queries, 32-dim, 3 decoder layers: seconds per CPU training step on
    small clips."""
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


NETWORK_PRESETS: Dict[str, Callable[[], NetworkConfig]] = {
    "ctvis_r50_ytvis19": lambda: r50_network(YTVIS_NUM_CLASSES),
    "ctvis_r50_ytvis21": lambda: r50_network(YTVIS_NUM_CLASSES),
    "ctvis_r50_ovis": lambda: r50_network(OVIS_NUM_CLASSES),
    "ctvis_swinl_ytvis19": lambda: swinl_network(YTVIS_NUM_CLASSES),
    "ctvis_swinl_ytvis21": lambda: swinl_network(YTVIS_NUM_CLASSES),
    "ctvis_swinl_ovis": lambda: swinl_network(OVIS_NUM_CLASSES),
    "tiny": tiny_network,
}


def network_preset(name: str) -> NetworkConfig:
    """The network of the preset called ``name`` (one of ``NETWORK_PRESETS``)."""
    try:
        return NETWORK_PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown network preset {name!r}; known: {sorted(NETWORK_PRESETS)}") from None


# ---------------------------------------------------------------------------- whole models
def _released(network: NetworkConfig) -> CTVISConfig:
    """A released CTVIS model around ``network``: the released loss, CT-CL, tracker and
    inference settings (the CT-CL negatives and the tracker's classes follow the network)."""
    return CTVISConfig(network=network, criterion=CriterionConfig(), ctcl=CTCLConfig(), tracker=TrackerConfig(),
                       inference=InferenceConfig())


def ctvis_r50_ytvis19() -> CTVISConfig:
    return _released(r50_network(YTVIS_NUM_CLASSES))


def ctvis_r50_ytvis21() -> CTVISConfig:
    return _released(r50_network(YTVIS_NUM_CLASSES))


def ctvis_r50_ovis() -> CTVISConfig:
    return _released(r50_network(OVIS_NUM_CLASSES))


def ctvis_swinl_ytvis19() -> CTVISConfig:
    return _released(swinl_network(YTVIS_NUM_CLASSES))


def ctvis_swinl_ytvis21() -> CTVISConfig:
    return _released(swinl_network(YTVIS_NUM_CLASSES))


def ctvis_swinl_ovis() -> CTVISConfig:
    return _released(swinl_network(OVIS_NUM_CLASSES))


def tiny() -> CTVISConfig:
    """The tiny network with the released losses and tracker, except 512 points per mask
    (instead of 12544) so a CPU training step takes well under a second on small clips, and the
    top 10 video instances (the synthetic videos hold up to 4 instances of 3 classes: keeping only
    num_classes = 3 would cap the recall)."""
    config = _released(tiny_network())
    return replace(
        config,
        criterion=replace(config.criterion, num_points=512),
        inference=replace(config.inference, num_topk=10),
    )


PRESETS: Dict[str, Callable[[], CTVISConfig]] = {
    "ctvis_r50_ytvis19": ctvis_r50_ytvis19,
    "ctvis_r50_ytvis21": ctvis_r50_ytvis21,
    "ctvis_r50_ovis": ctvis_r50_ovis,
    "ctvis_swinl_ytvis19": ctvis_swinl_ytvis19,
    "ctvis_swinl_ytvis21": ctvis_swinl_ytvis21,
    "ctvis_swinl_ovis": ctvis_swinl_ovis,
    "tiny": tiny,
}


def preset(name: str) -> CTVISConfig:
    """The model preset called ``name`` (one of ``PRESETS``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


__all__ = [
    *PRESETS,
    "PRESETS",
    "NETWORK_PRESETS",
    "preset",
    "network_preset",
    "r50_network",
    "swinl_network",
    "tiny_network",
]
