"""The CTVIS optimisation recipe: AdamW parameter groups, warmup + step decay, gradient clipping.

As the released code (Mask2Former's `build_optimizer`, detectron2's `build_lr_scheduler`):
- every trainable parameter gets the base lr and weight decay, except: parameters of the backbone
  get lr x `backbone_multiplier`; parameters owned by a normalisation layer get
  `weight_decay_norm`, those of an `nn.Embedding` get `weight_decay_embed`, and Swin's relative
  position bias tables / absolute position embeddings get no decay;
- groups with equal hyper-parameters are merged (detectron2's `reduce_param_groups`), in the order
  their first parameter appears in `named_modules()`, so optimizer state dicts are stable;
- the lr multiplier at iteration `it` (0-based, before the `it`-th optimizer step) is
  ``gamma ** bisect_right(steps, it)`` after warmup; during the `warmup_iters` first iterations it
  goes linearly from ``warmup_factor`` (x the value at 0) to the value at the end of warmup
  (detectron2's `WarmupParamScheduler`), or stays at ``warmup_factor`` ("constant");
- "full_model" gradient clipping: one L2 norm over every parameter's gradient, clipped to `value`.
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable

import torch
from torch import nn

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# Swin parameters that Mask2Former never decays, matched on the parameter's own name
NO_DECAY_PARAMETER_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def backbone_of(model: nn.Module) -> nn.Module | None:
    """The backbone module: `model.network.backbone` (the CTVIS contract), else `model.backbone`."""
    network = getattr(model, "network", model)
    return getattr(network, "backbone", None)


def parameter_groups(model: nn.Module, optimizer_config: Any) -> list[dict[str, Any]]:
    """AdamW parameter groups of `model` under `pipelines.config.OptimizerConfig`.

    Each group is ``{"params": [...], "lr": float, "weight_decay": float, "name": str}``; `name`
    says why the group exists (``base``, ``backbone``, ``norm``, ``backbone/norm``, ...).
    """
    backbone = backbone_of(model)
    backbone_modules = {id(m) for m in backbone.modules()} if backbone is not None else set()
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = optimizer_config.lr
            weight_decay = optimizer_config.weight_decay
            reasons = []
            if id(module) in backbone_modules:
                lr = lr * optimizer_config.backbone_multiplier
                reasons.append("backbone")
            if param_name in NO_DECAY_PARAMETER_NAMES:
                weight_decay = 0.0
                reasons.append("position")
            if isinstance(module, NORM_MODULE_TYPES):
                weight_decay = optimizer_config.weight_decay_norm
                reasons.append("norm")
            if isinstance(module, nn.Embedding):
                weight_decay = optimizer_config.weight_decay_embed
                reasons.append("embed")
            key = (float(lr), float(weight_decay))
            group = groups.get(key)
            if group is None:
                group = groups[key] = {"params": [], "lr": key[0], "weight_decay": key[1],
                                       "name": "/".join(reasons) or "base"}
            group["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(model: nn.Module, optimizer_config: Any) -> torch.optim.Optimizer:
    """AdamW (the only optimizer CTVIS uses) over `parameter_groups`."""
    groups = parameter_groups(model, optimizer_config)
    return torch.optim.AdamW(groups, lr=optimizer_config.lr, weight_decay=optimizer_config.weight_decay)


def lr_multiplier(iteration: int, schedule_config: Any) -> float:
    """The learning-rate factor at 0-based `iteration` (`pipelines.config.ScheduleConfig`)."""
    cfg = schedule_config
    steps = [s for s in cfg.steps if s <= cfg.max_iter]

    def decayed(it: int) -> float:
        return cfg.gamma ** bisect.bisect_right(steps, it)

    if iteration < cfg.warmup_iters:
        start = cfg.warmup_factor * decayed(0)
        if cfg.warmup_method == "constant":
            return start
        end = decayed(cfg.warmup_iters)
        return start + (end - start) * iteration / cfg.warmup_iters
    return decayed(iteration)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_config: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then multi-step decay (detectron2's WarmupMultiStepLR, the only schedule CTVIS uses): a
    LambdaLR stepped once after every optimizer step (detectron2's LRMultiplier)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_multiplier(it, schedule_config))


def clip_gradients(parameters: Iterable[torch.Tensor], clip_config: Any) -> torch.Tensor | None:
    """Full-model gradient clipping (detectron2's "full_model" type, the one CTVIS uses;
    `pipelines.config.GradClipConfig`); returns the total norm before clipping (None when disabled)."""
    if not clip_config.enabled:
        return None
    return torch.nn.utils.clip_grad_norm_(list(parameters), clip_config.value, norm_type=clip_config.norm_type)
