"""What the network returns: per-frame predictions, typed and with their shapes.

N frame-images (N = B*T for B clips of T frames, row ``b*T + t``), Q queries, K classes, C channels;
masks are at 1/4 of the padded input size (h = H/4, w = W/4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch import Tensor


@dataclass
class FrameOutputs:
    """One decoder prediction for N frame-images."""

    logits: Tensor  # (N, Q, K+1) class logits, the last column "no object"
    masks: Tensor  # (N, Q, h, w) mask logits
    queries: Tensor  # (N, Q, C) the normed decoder queries
    embeds: Tensor  # (N, Q, C) re-id embeddings (the tracker's and CT-CL's)

    @property
    def num_frames(self) -> int:
        return self.logits.shape[0]


@dataclass
class NetworkOutputs:
    """The network's forward: the final prediction, the earlier ones (deep supervision), and on
    request what the network computed on the way (for tests and debugging)."""

    final: FrameOutputs
    aux: List[FrameOutputs]  # one per decoder layer, earlier predictions (0 = from the learnable queries)
    # With return_intermediates / return_attention_logits:
    attn_mask_logits: Optional[List[Tensor]] = None  # per decoder layer (N, Q, h_l, w_l), thresholded at 0
    backbone_features: Optional[Dict[str, Tensor]] = None  # res2..res5
    mask_features: Optional[Tensor] = None  # (N, mask_dim, h, w)
    multi_scale_features: Optional[List[Tensor]] = field(default=None)  # strides 32, 16, 8
