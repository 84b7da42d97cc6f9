"""Boxes of mask logits, as the released Mask2Former computes ``pred_bboxes`` (which CTVIS never
uses): the parity tests compare them with the reference fixtures from the masks the network returns."""
from __future__ import annotations

from typing import Tuple

import torch


def normalized_mask_boxes(mask_logits: torch.Tensor) -> torch.Tensor:
    """(..., H, W) logits -> (..., 4) boxes (x1, y1, x2, y2) of ``logits > 0`` divided by (W, H, W, H);
    x2/y2 are exclusive (last index + 1); an empty mask gives zeros (detectron2 BitMasks rules)."""
    with torch.no_grad():
        foreground = mask_logits > 0
        height, width = foreground.shape[-2:]
        columns = foreground.any(-2)  # (..., W)
        rows = foreground.any(-1)  # (..., H)

        def span(occupied: torch.Tensor, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
            index = torch.arange(length, device=occupied.device)
            first = torch.where(occupied, index, length).amin(-1)
            last = torch.where(occupied, index + 1, 0).amax(-1)
            empty = ~occupied.any(-1)
            return first.masked_fill(empty, 0), last

        x1, x2 = span(columns, width)
        y1, y2 = span(rows, height)
        boxes = torch.stack([x1, y1, x2, y2], -1).to(torch.float32)
        return boxes / boxes.new_tensor([width, height, width, height])
