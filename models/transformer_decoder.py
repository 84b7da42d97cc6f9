"""CTVIS's ``CLMultiScaleMaskedTransformerDecoder``: Mask2Former's masked-attention decoder with
a re-identification embedding head.

Learnable queries go through ``num_layers`` layers of (masked cross-attention -> self-attention ->
FFN), post-norm, visiting the three pixel-decoder scales round-robin (coarse to fine). Before the
first layer and after every layer the heads predict class logits, mask logits and re-id
embeddings; each prediction's mask logits, resized to the next layer's scale, give that layer's
attention mask (``sigmoid < 0.5`` is blocked; a query whose row would be fully blocked may attend
everywhere).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .frame_outputs import FrameOutputs, NetworkOutputs
from .layers import MLP, FeedForward, MultiHeadAttention, sine_position_encoding


class MaskedDecoderLayer(nn.Module):
    """Post-norm cross-attention -> self-attention -> FFN on queries (B, Q, C)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for linear in (self.ffn.linear1, self.ffn.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        blocked: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """queries (B, Q, C); query_pos (1, Q, C); memory (B, HW, C); memory_pos (1, HW, C);
        blocked (B, Q, HW) bool or None. Returns (B, Q, C)."""
        attended = self.cross_attn(queries + query_pos, memory + memory_pos, memory, blocked)
        queries = self.cross_attn_norm(queries + self.dropout(attended))
        q = queries + query_pos
        queries = self.self_attn_norm(queries + self.dropout(self.self_attn(q, q, queries)))
        return self.ffn_norm(queries + self.dropout(self.ffn(queries)))


class MaskedTransformerDecoder(nn.Module):
    """(multi-scale features [(B, C_in, h_l, w_l)] x3 coarse-to-fine, mask_features (B, mask_dim, H, W))
    -> dict of predictions, see ``forward``."""

    def __init__(
        self,
        in_channels: int,
        mask_dim: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 9,
        dropout: float = 0.0,
        reid_hidden_dim: int = 256,
        num_reid_head_layers: int = 3,
        enforce_input_projection: bool = False,
        num_feature_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.num_feature_levels = num_feature_levels
        self.layers = nn.ModuleList(
            MaskedDecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.query_features = nn.Embedding(num_queries, hidden_dim)
        self.query_positions = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        # The original keeps an identity projection (no parameters) when the channels match.
        if in_channels != hidden_dim or enforce_input_projection:
            self.input_projections = nn.ModuleList(
                nn.Conv2d(in_channels, hidden_dim, kernel_size=1) for _ in range(num_feature_levels)
            )
            for conv in self.input_projections:
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
        else:
            self.input_projections = None
        self.class_head = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_head = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        if num_reid_head_layers > 0:
            self.reid_head = MLP(hidden_dim, reid_hidden_dim, hidden_dim, num_reid_head_layers)
            for layer in self.reid_head.layers:
                nn.init.kaiming_uniform_(layer.weight, a=1)
                nn.init.zeros_(layer.bias)
        else:
            self.reid_head = nn.Identity()

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor) -> FrameOutputs:
        """queries (B, Q, C), mask features (B, C, H, W) -> logits (B, Q, K+1), mask logits
        (B, Q, H, W), normed queries (B, Q, C), re-id embeddings (B, Q, C)."""
        normed = self.output_norm(queries)
        logits = self.class_head(normed)
        mask_embed = self.mask_head(normed)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        return FrameOutputs(logits=logits, masks=masks, queries=normed, embeds=self.reid_head(normed))

    def forward(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        return_attention_logits: bool = False,
    ) -> NetworkOutputs:
        """The final prediction and the ``num_layers`` earlier ones (0 = from the learnable queries),
        each a `FrameOutputs` (B frame-images); with ``return_attention_logits`` also
        ``attn_mask_logits``: per layer (B, Q, h_l, w_l), the mask logits it thresholds into its
        attention mask."""
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        memories, memory_positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            height, width = feature.shape[-2:]
            sizes.append((height, width))
            pos = sine_position_encoding(height, width, self.hidden_dim // 2, feature.device)
            memory_positions.append(pos.flatten(2).transpose(1, 2))  # (1, hw, C)
            projected = feature if self.input_projections is None else self.input_projections[level](feature)
            # (B, C, hw) + level embedding, then batch-first (B, hw, C)
            memories.append((projected.flatten(2) + self.level_embed.weight[level][None, :, None]).transpose(1, 2))

        batch = mask_features.shape[0]
        query_pos = self.query_positions.weight.unsqueeze(0)  # (1, Q, C)
        queries = self.query_features.weight.unsqueeze(0).expand(batch, -1, -1)

        predictions: List[FrameOutputs] = [self.predict(queries, mask_features)]
        attention_logits: List[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            level = index % self.num_feature_levels
            # the previous prediction's mask logits at this level's resolution
            resized = F.interpolate(predictions[-1].masks, size=sizes[level], mode="bilinear", align_corners=False)
            if return_attention_logits:
                attention_logits.append(resized)
            blocked = resized.sigmoid().flatten(2) < 0.5  # (B, Q, hw)
            blocked = blocked & ~blocked.all(-1, keepdim=True)
            queries = layer(queries, query_pos, memories[level], memory_positions[level], blocked.detach())
            predictions.append(self.predict(queries, mask_features))

        return NetworkOutputs(final=predictions[-1], aux=predictions[:-1],
                              attn_mask_logits=attention_logits if return_attention_logits else None)
