"""Point sampling on mask logits (PointRend style), as used by the Mask2Former matcher and losses.

Masks are compared on a few thousand sampled points instead of every pixel. Coordinates are
normalised to [0, 1] in (x, y) order over the whole tensor extent, so a prediction at 1/4 of the
padded image resolution and a target at the padded resolution are sampled at the same places
without resizing either of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "mask_uncertainty", "sample_uncertain_points"]


def point_sample(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``features`` at normalised point coordinates.

    Args:
        features: (R, C, H, W) maps (R images or masks, C channels).
        coords: (R, P, 2) points in [0, 1] given as (x, y); point p of row r reads ``features[r]``.
            0 and 1 are the outer edges of the first and last pixel (``align_corners=False``),
            out-of-range reads are zero-padded, as detectron2's ``point_sample``.

    Returns:
        (R, C, P) sampled values, in the dtype of ``features``.
    """
    if features.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects features (R,C,H,W) and coords (R,P,2); got "
            f"{tuple(features.shape)} and {tuple(coords.shape)}"
        )
    if features.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_sample: {features.shape[0]} feature maps but {coords.shape[0]} point sets"
        )
    grid = (2.0 * coords.to(features.dtype) - 1.0).unsqueeze(2)  # (R, P, 1, 2) in [-1, 1]
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def mask_uncertainty(mask_logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a class-agnostic mask logit: ``-|logit|`` (highest at the 0.5 boundary)."""
    return -mask_logits.abs()


@torch.no_grad()
def sample_uncertain_points(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose ``num_points`` points per mask, biased towards uncertain (near-zero logit) places.

    The PointRend training scheme: draw ``int(num_points * oversample_ratio)`` uniform points,
    keep the ``int(importance_sample_ratio * num_points)`` most uncertain of them and fill the rest
    with fresh uniform points.

    Args:
        mask_logits: (R, H, W) or (R, 1, H, W) mask logits.
        generator: source of the random points (on the device of ``mask_logits``); ``None`` uses
            the global torch RNG.

    Returns:
        (R, num_points, 2) coordinates in [0, 1], (x, y) order; float32 (float64 for float64 logits).
    """
    if mask_logits.dim() == 3:
        mask_logits = mask_logits.unsqueeze(1)
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"sample_uncertain_points expects (R,H,W) or (R,1,H,W) logits, got {tuple(mask_logits.shape)}")
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
            f"{oversample_ratio} and {importance_sample_ratio}"
        )
    num_masks = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    device = mask_logits.device
    # Coordinates stay float32 even for half-precision logits (a half can't address 12544 points
    # finely); float64 logits get float64 coordinates.
    dtype = torch.float64 if mask_logits.dtype == torch.float64 else torch.float32

    candidates = torch.rand(num_masks, num_sampled, 2, device=device, dtype=dtype, generator=generator)
    uncertainty = mask_uncertainty(point_sample(mask_logits, candidates))[:, 0, :]  # (R, num_sampled)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (R, num_uncertain)
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        fresh = torch.rand(num_masks, num_random, 2, device=device, dtype=dtype, generator=generator)
        chosen = torch.cat([chosen, fresh], dim=1)
    return chosen
