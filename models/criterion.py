"""Mask2Former set criterion: Hungarian matching, then class, mask (BCE) and dice losses.

CTVIS trains on video clips but supervises every frame as an independent image: B clips of T
frames are flattened video-major into I = B*T frame-images (row ``b*T + t``), each with its own
targets and its own matching. Instances absent from a frame (track id -1) are simply left out of
that frame's targets, so a query matched to nothing there is pushed to the no-object class.

Ground-truth masks are at the padded image resolution while predicted masks are at 1/4 of it;
the point sampling in normalised coordinates handles the scale difference without resizing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.matcher import FrameTarget, HungarianMatcher, MatcherConfig, stack_target_masks
from models.point_sampling import point_sample, sample_uncertain_points

__all__ = [
    "CriterionConfig",
    "SetCriterion",
    "gt_to_query_from_indices",
]


@dataclass(frozen=True)
class CriterionConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True


def gt_to_query_from_indices(
    indices: Sequence[tuple[torch.Tensor, torch.Tensor]], num_instances: int
) -> torch.Tensor:
    """Invert matcher output into the query matched to each ground truth.

    Args:
        indices: per frame-image ``(query_idx, gt_idx)`` covering all ``num_instances`` targets.

    Returns:
        (I, N) int64: entry [i, n] is the query matched to target n of image i (the original's
        ``query_idx[argsort(gt_idx)]``).
    """
    out = torch.empty(len(indices), num_instances, dtype=torch.int64)
    for image, (query_idx, gt_idx) in enumerate(indices):  # per frame-image: matcher output is a list
        if gt_idx.numel() != num_instances or not torch.equal(torch.sort(gt_idx).values, torch.arange(num_instances)):
            raise ValueError(
                f"frame-image {image}: the matching covers targets {gt_idx.tolist()}, expected all of "
                f"0..{num_instances - 1} (are there more instances than queries?)"
            )
        out[image, gt_idx] = query_idx
    return out


class SetCriterion(nn.Module):
    """Matching-based losses of Mask2Former for I frame-images.

    Loss names: ``loss_ce``, ``loss_mask``, ``loss_dice`` for the final prediction and
    ``loss_ce_{i}``, ... for auxiliary prediction i (deep supervision).
    """

    empty_weight: torch.Tensor

    def __init__(self, num_classes: int, config: CriterionConfig = CriterionConfig()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config
        self.matcher = HungarianMatcher(
            MatcherConfig(
                cost_class=config.class_weight,
                cost_mask=config.mask_weight,
                cost_dice=config.dice_weight,
                num_points=config.num_points,
            )
        )
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = config.no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    @property
    def weight_dict(self) -> dict[str, float]:
        return {"loss_ce": self.config.class_weight, "loss_mask": self.config.mask_weight, "loss_dice": self.config.dice_weight}

    def loss_labels(
        self, pred_logits: torch.Tensor, targets: Sequence[FrameTarget], indices: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Weighted cross-entropy over K+1 classes; unmatched queries target no-object (index K).

        pred_logits: (I, Q, K+1).
        """
        logits = pred_logits.float()
        image_idx, query_idx, gt_classes = self._matched(targets, indices, logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[image_idx, query_idx] = gt_classes
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.device))

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        targets: Sequence[FrameTarget],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled sigmoid BCE and dice of the matched masks, each summed over masks and
        divided by ``num_masks``.

        pred_masks: (I, Q, h, w) logits; target masks (M, H, W) at any resolution.
        """
        device = pred_masks.device
        image_idx, query_idx, _ = self._matched(targets, indices, device)
        if query_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected when nothing is matched
            return zero, zero
        all_target_masks = stack_target_masks(targets, device, pred_masks.dtype)  # (sum M, H, W)
        offsets = torch.tensor([0] + [int(t["labels"].shape[0]) for t in targets], device=device).cumsum(0)
        gt_rows = offsets[image_idx] + torch.cat([gt.to(device) for _, gt in indices])
        pred = pred_masks[image_idx, query_idx][:, None]  # (R, 1, h, w)
        target = all_target_masks[gt_rows][:, None]  # (R, 1, H, W)
        with torch.no_grad():
            coords = sample_uncertain_points(
                pred,
                self.config.num_points,
                self.config.oversample_ratio,
                self.config.importance_sample_ratio,
                generator,
            )
            point_labels = point_sample(target, coords)[:, 0].float()  # (R, P)
        point_logits = point_sample(pred, coords)[:, 0].float()  # (R, P)
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1).sum() / num_masks
        probs = point_logits.sigmoid()
        numerator = 2 * (probs * point_labels).sum(-1)
        denominator = probs.sum(-1) + point_labels.sum(-1)
        loss_dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
        return loss_mask, loss_dice

    @staticmethod
    def _matched(
        targets: Sequence[FrameTarget], indices: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flatten per-image matches into (image index, query index, gt class) vectors."""
        image_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        gt_classes = torch.cat([t["labels"].to(device)[g.to(device)] for t, (_, g) in zip(targets, indices)])
        return image_idx, query_idx, gt_classes.to(torch.int64)

    def _layer_losses(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: Sequence[FrameTarget],
        num_masks: float,
        generator: torch.Generator | None,
    ) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        indices = self.matcher(pred_logits.detach(), pred_masks.detach(), targets, generator)
        loss_mask, loss_dice = self.loss_masks(pred_masks, targets, indices, num_masks, generator)
        losses = {"loss_ce": self.loss_labels(pred_logits, targets, indices), "loss_mask": loss_mask, "loss_dice": loss_dice}
        return losses, indices

    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: Sequence[FrameTarget],
        aux_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
        *,
        num_masks: float | None = None,
        weighted: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """Losses of the final prediction and, with deep supervision, of each auxiliary one.

        Args:
            pred_logits: (I, Q, K+1) final class logits of I = B*T frame-images (row ``b*T + t``).
            pred_masks: (I, Q, h, w) final mask logits.
            targets: I frame targets; an instance absent from a frame is not in that frame's
                target (as `models.model.CTVISModel` builds them from a ClipBatch).
            aux_outputs: ``(pred_logits, pred_masks)`` of each intermediate decoder prediction.
            num_masks: normaliser of the mask losses. ``None`` counts the targets here; a
                distributed trainer passes its all-reduced mean over workers instead. Clamped >= 1.
            weighted: multiply each loss by its weight (``class/mask/dice_weight``).
            generator: source of the random points (matching and loss).

        Returns:
            the losses dict and the final-layer matching ``[(query_idx, gt_idx)]`` per image.
        """
        if num_masks is None:
            num_masks = float(sum(int(t["labels"].shape[0]) for t in targets))
        num_masks = max(float(num_masks), 1.0)
        weights = self.weight_dict

        def named(layer_losses: dict[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
            return {name + suffix: value * weights[name] if weighted else value for name, value in layer_losses.items()}

        final_losses, indices = self._layer_losses(pred_logits, pred_masks, targets, num_masks, generator)
        losses = named(final_losses, "")
        if self.config.deep_supervision:
            for layer, (aux_logits, aux_masks) in enumerate(aux_outputs):
                aux_losses, _ = self._layer_losses(aux_logits, aux_masks, targets, num_masks, generator)
                losses.update(named(aux_losses, f"_{layer}"))
        return losses, indices
