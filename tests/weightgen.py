"""Deterministic weights for parity tests (the generator specified in the model fixtures' README).

Every floating state_dict entry of the *official* (detectron2-named) model is drawn from a
``torch.Generator`` seeded with the CRC32 of its key, so a tensor depends on (key, shape) only:
the re-implementation loads the same numbers the original ran with, via the checkpoint converter.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import torch

F32 = torch.float32


def key_seed(key: str) -> int:
    return zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF


def _const(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F32)


def generate_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(key_seed(key))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return torch.randn(shape, generator=generator, dtype=F32) * _const(0.1)
    if leaf == "running_var":  # U[0.5, 1.5)
        return torch.rand(shape, generator=generator, dtype=F32) + _const(0.5)
    if len(shape) <= 1:
        if leaf == "weight":  # every 1-D weight is a norm weight
            return torch.randn(shape, generator=generator, dtype=F32) * _const(0.1) + _const(1.0)
        return torch.randn(shape, generator=generator, dtype=F32) * _const(0.02)
    # fan_in: Linear in_features, Conv in/groups*kh*kw, Embedding/level_embed/in_proj shape[1]
    fan_in = int(np.prod(shape[1:]))
    std = float(np.float32(1.0 / math.sqrt(fan_in)))
    return torch.randn(shape, generator=generator, dtype=F32) * _const(std)


def load_manifest(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def relative_position_index_official(window_size: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window_size - 1
    rel[:, :, 1] += window_size - 1
    rel[:, :, 0] *= 2 * window_size - 1
    return rel.sum(-1)


def generate_official_state_dict(manifest: dict, num_classes: int | None = None) -> Dict[str, torch.Tensor]:
    """The whole official state dict: generated floats, plus the entries kept as constructed
    (``criterion.empty_weight`` and the int64 Swin ``relative_position_index`` buffers)."""
    num_classes = manifest.get("num_classes", num_classes)
    state: Dict[str, torch.Tensor] = {}
    for entry in manifest["state_dict"]:
        key, shape, dtype = entry["key"], entry["shape"], entry["dtype"]
        if key == "criterion.empty_weight":
            weight = torch.ones(num_classes + 1)
            weight[-1] = 0.1
            state[key] = weight
        elif key.endswith("relative_position_index"):
            if dtype != "int64" or shape[0] != shape[1]:
                raise ValueError(f"{key}: unexpected relative_position_index entry {entry}")
            state[key] = relative_position_index_official(int(round(math.sqrt(shape[0]))))
        elif dtype.startswith("float"):
            state[key] = generate_tensor(key, shape)
        else:
            raise ValueError(f"{key}: no generation rule for dtype {dtype}")
    return state


def floating_entries(manifest: dict) -> Iterable[Tuple[str, Sequence[int]]]:
    for entry in manifest["state_dict"]:
        if entry["dtype"].startswith("float") and entry["key"] != "criterion.empty_weight":
            yield entry["key"], entry["shape"]
