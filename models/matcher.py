"""Hungarian matching between the Q predicted masks of a frame and its ground-truth instances.

The cost follows Mask2Former: ``cost_class * (-p(target class)) + cost_mask * sigmoid-CE +
cost_dice * dice``, the two mask costs measured on ``num_points`` random points shared by every
prediction and target of the frame-image. All frame-images are costed together with batched
matrix products; only the assignment itself (scipy ``linear_sum_assignment``) runs per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from models.point_sampling import point_sample

__all__ = ["FrameTarget", "MatcherConfig", "HungarianMatcher", "stack_target_masks"]


class FrameTarget(TypedDict):
    """Ground truth of one frame-image: M instances.

    labels: (M,) int64 class ids in [0, K).
    masks: (M, H, W) bool or float binary masks at the (padded) image resolution.
    """

    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class MatcherConfig:
    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 12544


def stack_target_masks(targets: Sequence[FrameTarget], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Concatenate the target masks of all frame-images into (sum M, H, W), zero-padding each to
    the largest H and W (Mask2Former's ``nested_tensor_from_tensor_list``; normally they already
    share the padded batch size)."""
    masks = [t["masks"] for t in targets]
    for index, mask in enumerate(masks):
        if mask.dim() != 3:
            raise ValueError(f"targets[{index}]['masks'] must be (M,H,W), got shape {tuple(mask.shape)}")
    height = max(int(m.shape[-2]) for m in masks)
    width = max(int(m.shape[-1]) for m in masks)
    if all(m.shape[-2:] == (height, width) for m in masks):
        return torch.cat(masks).to(device=device, dtype=dtype)
    out = torch.zeros(sum(int(m.shape[0]) for m in masks), height, width, device=device, dtype=dtype)
    start = 0
    for mask in masks:
        out[start : start + mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask.to(device=device, dtype=dtype)
        start += mask.shape[0]
    return out


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth instances, per frame-image."""

    def __init__(self, config: MatcherConfig = MatcherConfig()) -> None:
        super().__init__()
        if config.cost_class == 0 and config.cost_mask == 0 and config.cost_dice == 0:
            raise ValueError("MatcherConfig: all matching costs are 0")
        self.config = config

    @torch.no_grad()
    def cost_matrices(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: Sequence[FrameTarget],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Matching costs of every frame-image.

        Args:
            pred_logits: (I, Q, K+1) class logits of I frame-images.
            pred_masks: (I, Q, h, w) mask logits (any resolution: points are normalised).
            targets: I frame targets (see :class:`FrameTarget`).
            generator: source of the random points.

        Returns:
            costs (I, Q, M_max) float32 on the predictions' device (columns past an image's own M
            are padding) and the list of M per image.
        """
        num_images, num_queries = pred_logits.shape[:2]
        if len(targets) != num_images or pred_masks.shape[:2] != (num_images, num_queries):
            raise ValueError(
                f"matcher: pred_logits {tuple(pred_logits.shape)}, pred_masks {tuple(pred_masks.shape)} "
                f"and {len(targets)} targets disagree on the number of frame-images / queries"
            )
        device = pred_logits.device
        counts = [int(t["labels"].shape[0]) for t in targets]
        for index, (target, count) in enumerate(zip(targets, counts)):
            if target["masks"].shape[0] != count:
                raise ValueError(
                    f"targets[{index}]: {count} labels but {target['masks'].shape[0]} masks"
                )
        max_count = max(counts, default=0)
        if max_count == 0:
            return torch.zeros(num_images, num_queries, 0, device=device), counts

        num_points = self.config.num_points
        with torch.autocast(device_type=device.type, enabled=False):
            # Every prediction and target of one image shares the same random points.
            coords = torch.rand(num_images, num_points, 2, device=device, generator=generator)
            pred_points = point_sample(pred_masks.float(), coords)  # (I, Q, P)

            counts_t = torch.tensor(counts, device=device)
            owner = torch.repeat_interleave(torch.arange(num_images, device=device), counts_t)  # image of each target
            first = torch.cumsum(counts_t, 0) - counts_t  # index of each image's first target
            slot = torch.arange(owner.shape[0], device=device) - first[owner]  # position within its image
            target_masks = stack_target_masks(targets, device, torch.float32)  # (sum M, H, W)
            target_points_flat = point_sample(target_masks[:, None], coords[owner])[:, 0]  # (sum M, P)
            # Pad into (I, M_max, P); padded targets are all-zero masks whose costs are ignored.
            target_points = pred_points.new_zeros(num_images, max_count, num_points)
            target_points[owner, slot] = target_points_flat
            labels = torch.zeros(num_images, max_count, dtype=torch.long, device=device)
            labels[owner, slot] = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.long)

            probs = pred_logits.float().softmax(-1)  # (I, Q, K+1)
            cost_class = -probs.gather(2, labels[:, None, :].expand(-1, num_queries, -1))  # (I, Q, M)

            # Sigmoid cross-entropy summed over points: with BCE(x,1) - BCE(x,0) = -x it is
            # (-x) @ t^T + sum_p BCE(x,0), one batched product instead of two.
            target_points_t = target_points.transpose(1, 2)  # (I, P, M)
            cost_mask = (F.softplus(pred_points).sum(-1, keepdim=True) - torch.bmm(pred_points, target_points_t)) / num_points

            pred_probs = pred_points.sigmoid()
            numerator = 2 * torch.bmm(pred_probs, target_points_t)
            denominator = pred_probs.sum(-1)[:, :, None] + target_points.sum(-1)[:, None, :]
            cost_dice = 1 - (numerator + 1) / (denominator + 1)

            costs = self.config.cost_mask * cost_mask + self.config.cost_class * cost_class + self.config.cost_dice * cost_dice
        return costs, counts

    @torch.no_grad()
    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: Sequence[FrameTarget],
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match the queries of I frame-images to their targets.

        Args: as :meth:`cost_matrices`.

        Returns:
            For every image a pair ``(query_idx, gt_idx)`` of int64 CPU tensors of length
            ``min(Q, M)``; ``query_idx`` is ascending (scipy's order, as Mask2Former returns it).
        """
        costs, counts = self.cost_matrices(pred_logits, pred_masks, targets, generator)
        costs_cpu = costs.cpu().numpy()
        indices = []
        for image, count in enumerate(counts):
            rows, cols = linear_sum_assignment(costs_cpu[image, :, :count]) if count else (np.zeros(0), np.zeros(0))
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
