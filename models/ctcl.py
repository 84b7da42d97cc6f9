"""CT-CL: the consistent contrastive loss of CTVIS on the re-identification embeddings.

For each clip the released code first fills a training memory bank frame by frame (step 1), then
builds one contrastive item per (frame t >= 1, instance present at t) that has a positive
(step 2). This module computes the same items and losses with tensor operations across clips,
frames and instances; only the similarity-guided fusion recurrence runs as a loop over T.

Semantics of the released ``CTCLPlugin`` (quirks included), for clip b, instance n, frame t:

* Step 1. A present (t, n) stores its anchor ``E[t, q(t, n)]`` and, as "negatives", the sorted
  ``num_negatives`` queries drawn from ``{0 .. num_negatives} - {q(t, n)}`` (so only the first
  ``num_negatives + 1`` query indices are ever negatives, and one of them is dropped at random
  only when the anchor query lies outside that range). An absent (t, n) stores *all* Q
  embeddings of frame t as its negatives.
* Step 2, item (t, n) for t >= 1 and n present at t:
  - anchor ``E[t, q(t, n)]``; negatives: those stored at frame **t - 1** for n;
  - positive: the anchor of the most recent present frame before t; with ``momentum_embed``
    and probability 0.5 instead the similarity-guided fused memory embedding after frame t - 1;
  - when no frame before t is present, the first present frame after t, but only if
    ``exist_after(t)``, which the released code computes as ``t != #absent frames after t``
    (not "some later frame is present"); otherwise there is no item.
  - ``loss = log(1 + sum_j exp(neg_j - pos))`` on dot products, and
    ``aux = mean over the 1 + K candidates of (cos(candidate, anchor) - label)^2``.
* ``loss_reid`` / ``loss_aux_reid`` are sums over all items of all clips divided by the number
  of items (no distributed reduce); with no item they are ``0 * sum(pred_embeds)``.

Similarity-guided fusion of the memory embedding: at the first present frame it is the anchor;
at a later present frame with anchor e, ``beta = max(0, mean cos(e, earlier anchors))`` and
``fused = (1 - beta) * fused + beta * e``; it is unchanged at absent frames.

``noise_embed`` (released option): an absent (t, n) of a real instance is, with probability
0.001, given the embedding of a random query of frame t, and then counts as present in the
memory bank (anchor, positive and fusion) while still storing all Q queries as negatives.

``negatives="paper"``: CTVIS issue 15 (the released branch is not the one used for the paper,
whose negatives are "the MA embeddings of other instances in the memory bank"). This variant
keeps the released positive and query negatives and adds, as further negatives, the fused
memory embeddings after frame t - 1 of every other instance of the clip already in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CTCLConfig",
    "CTCLChooser",
    "RandomChooser",
    "CTCLOutput",
    "ctcl_loss",
    "CTCLLoss",
    "FUSED_POSITIVE_PROBABILITY",
    "NOISE_PROBABILITY",
]

# Probabilities hard-wired in the released code (``np.random.rand() > 0.5`` / ``< 0.999``).
FUSED_POSITIVE_PROBABILITY = 0.5
NOISE_PROBABILITY = 0.001


@dataclass(frozen=True)
class CTCLConfig:
    reid_weight: float = 2.0
    aux_reid_weight: float = 3.0
    # None: every other query, Q - 1 (the released setting: 99 of 100 queries, 199 of 200).
    num_negatives: Optional[int] = None

    def resolved_num_negatives(self, num_queries: int) -> int:
        """The negatives per anchor for Q = `num_queries` queries (the default resolved)."""
        return num_queries - 1 if self.num_negatives is None else self.num_negatives
    momentum_embed: bool = True
    noise_embed: bool = False
    negatives: Literal["released", "paper"] = "released"


class CTCLChooser(Protocol):
    """The random choices of CT-CL. Each method is called once per loss evaluation with every
    case of its kind, as rows in the released code's call order (clip, then frame, then instance).
    Returned tensors may live on any device."""

    def negatives(self, calls: torch.Tensor, num_negatives: int) -> torch.Tensor:
        """calls: (M, 4) int64 rows ``(b, t, n, anchor_query)`` of the present (t, n).
        Returns (M, num_negatives) int64: the sorted ``random.sample({0..num_negatives} -
        {anchor_query}, num_negatives)`` of each call."""
        ...

    def fused_positive(self, items: torch.Tensor) -> torch.Tensor:
        """items: (M, 3) rows ``(b, t, n)`` of the items that have an earlier present frame
        (with ``momentum_embed``). Returns (M,) bool: use the fused memory embedding."""
        ...

    def noise_queries(self, calls: torch.Tensor, num_queries: int) -> torch.Tensor:
        """calls: (M, 3) rows ``(b, t, n)`` of absent (t, n) of real instances (with
        ``noise_embed``). Returns (M,) int64: the query whose embedding replaces the missing
        one, or -1 for none."""
        ...


class RandomChooser:
    """Draws the CT-CL choices from a ``torch.Generator`` (``None``: the global torch RNG).

    Negatives: when the anchor query is within ``0..num_negatives`` the result is all the others;
    otherwise one of the ``num_negatives + 1`` is dropped uniformly -- the same distribution as
    the released ``sorted(random.sample(...))``.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def _device(self, fallback: torch.device) -> torch.device:
        return self.generator.device if self.generator is not None else fallback

    def negatives(self, calls: torch.Tensor, num_negatives: int) -> torch.Tensor:
        device = self._device(calls.device)
        anchor = calls[:, 3].to(device)
        random_drop = torch.randint(0, num_negatives + 1, anchor.shape, device=device, generator=self.generator)
        drop = torch.where(anchor <= num_negatives, anchor, random_drop)  # (M,)
        kept = torch.arange(num_negatives, device=device)
        return kept[None, :] + (kept[None, :] >= drop[:, None]).long()  # skip the dropped index

    def fused_positive(self, items: torch.Tensor) -> torch.Tensor:
        device = self._device(items.device)
        return torch.rand(items.shape[0], device=device, generator=self.generator) > FUSED_POSITIVE_PROBABILITY

    def noise_queries(self, calls: torch.Tensor, num_queries: int) -> torch.Tensor:
        device = self._device(calls.device)
        count = calls.shape[0]
        noisy = torch.rand(count, device=device, generator=self.generator) >= 1 - NOISE_PROBABILITY
        query = torch.randint(0, num_queries, (count,), device=device, generator=self.generator)
        return torch.where(noisy, query, torch.full_like(query, -1))


@dataclass(frozen=True)
class CTCLOutput:
    """CT-CL losses with the per-item values behind them (M items in the released order:
    clip, then frame t = 1..T-1, then instance)."""

    loss_reid: torch.Tensor  # () weighted by reid_weight
    loss_aux_reid: torch.Tensor  # () weighted by aux_reid_weight
    loss_reid_unweighted: torch.Tensor
    loss_aux_reid_unweighted: torch.Tensor
    items: torch.Tensor  # (M, 6) int64: b, t, n, positive frame, negatives frame (t-1), all-queries flag
    num_candidates: torch.Tensor  # (M,) int64: 1 positive + the negatives
    item_loss_reid: torch.Tensor  # (M,)
    item_loss_aux_reid: torch.Tensor  # (M,)
    fused_positive: torch.Tensor  # (M,) bool: the positive is the fused memory embedding

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    def losses(self) -> dict[str, torch.Tensor]:
        return {"loss_reid": self.loss_reid, "loss_aux_reid": self.loss_aux_reid}


def _check_inputs(
    pred_embeds: torch.Tensor, gt_to_query: torch.Tensor, valid: torch.Tensor, config: CTCLConfig
) -> None:
    if pred_embeds.dim() != 4:
        raise ValueError(f"pred_embeds must be (B,T,Q,C), got shape {tuple(pred_embeds.shape)}")
    batch, frames, queries, _ = pred_embeds.shape
    if gt_to_query.dim() != 3 or gt_to_query.shape[:2] != (batch, frames):
        raise ValueError(f"gt_to_query must be ({batch},{frames},N), got shape {tuple(gt_to_query.shape)}")
    if valid.shape != gt_to_query.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(gt_to_query.shape)}, got {valid.dtype} {tuple(valid.shape)}")
    if config.num_negatives < 1 or config.num_negatives + 1 > queries:
        raise ValueError(
            f"CTCLConfig.num_negatives={config.num_negatives}: negatives are drawn from the first "
            f"num_negatives+1 of Q={queries} queries, so it must be in 1..{queries - 1}"
        )
    if config.negatives not in ("released", "paper"):
        raise ValueError(f"CTCLConfig.negatives must be 'released' or 'paper', got {config.negatives!r}")


def _positive_frames(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every (b, t, n): the most recent present frame before t (-1 if none), the first
    present frame after t (T if none) and the released ``exist_after(t)`` quirk.

    present: (B, T, N) bool.
    """
    frames = present.shape[1]
    t = torch.arange(frames, device=present.device)[None, :, None]  # (1, T, 1)
    last_upto = torch.where(present, t, -1).cummax(dim=1).values  # last present frame <= t
    last_before = torch.cat([torch.full_like(last_upto[:, :1], -1), last_upto[:, :-1]], dim=1)
    first_from = torch.where(present, t, frames).flip(1).cummin(dim=1).values.flip(1)  # first present >= t
    first_after = torch.cat([first_from[:, 1:], torch.full_like(first_from[:, :1], frames)], dim=1)
    absent = (~present).long()
    absent_after = absent.sum(1, keepdim=True) - absent.cumsum(1)  # absent frames after t
    exist_after_quirk = t != absent_after
    return last_before, first_after, exist_after_quirk


def _fused_memory(memory_embeds: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Similarity-guided fused memory embedding after each frame (zeros before the first
    present frame, where the released code has ``None``).

    The recurrence ``fused_t = (1 - c_t) fused_{t-1} + c_t e_t`` (c = 1 at the first present
    frame, beta at later present frames, 0 at absent ones) is linear, so it is evaluated in closed
    form: ``fused_t = sum_s c_s prod_{s<i<=t} (1 - c_i) e_s``, with no loop over T.

    memory_embeds: (B, T, N, C) anchors; present: (B, T, N). Returns (B, T, N, C).
    """
    frames = memory_embeds.shape[1]
    embeds = memory_embeds.transpose(1, 2)  # (B, N, T, C)
    here = present.transpose(1, 2).to(embeds.dtype)  # (B, N, T)
    normed = F.normalize(embeds, dim=-1)
    cosine = torch.matmul(normed, normed.transpose(-1, -2))  # (B, N, T, T): [t, s] = cos(e_t, e_s)
    earlier = torch.ones(frames, frames, dtype=torch.bool, device=embeds.device).tril(-1)  # s < t
    earlier_count = here.cumsum(-1) - here  # present frames before t
    similarity = (cosine * (here[..., None, :] * earlier)).sum(-1) / earlier_count.clamp(min=1)
    beta = torch.where(similarity > 0, similarity, torch.zeros_like(similarity))  # max(0, sim)
    step = here * torch.where(earlier_count == 0, torch.ones_like(beta), beta)  # c_t
    # keep[t, s] = prod_{s<i<=t} (1 - c_i): cumulative product down a matrix whose entry (i, s)
    # is 1 - c_i below the diagonal and 1 elsewhere.
    factors = torch.where(earlier, (1 - step)[..., :, None], torch.ones_like(cosine))
    keep = factors.cumprod(dim=-2)
    weights = keep * step[..., None, :] * (~earlier.T)  # (B, N, T, T), zero for s > t
    return torch.matmul(weights, embeds).transpose(1, 2)


def ctcl_loss(
    pred_embeds: torch.Tensor,
    gt_to_query: torch.Tensor,
    valid: torch.Tensor,
    config: CTCLConfig = CTCLConfig(),
    *,
    chooser: CTCLChooser | None = None,
    generator: torch.Generator | None = None,
    instance_mask: torch.Tensor | None = None,
) -> CTCLOutput:
    """CT-CL loss of B clips.

    Args:
        pred_embeds: (B, T, Q, C) re-id embeddings of the final decoder prediction.
        gt_to_query: (B, T, N) int64 query matched to ground truth n at frame t (absent ones
            have a query too, as the released matching gives them one).
        valid: (B, T, N) bool, instance n present at frame t. Clips with fewer instances are
            padded to N with columns that are False at every frame; such columns never make
            items, negatives or noise.
        chooser: the random choices (default: :class:`RandomChooser` on ``generator``).
        instance_mask: (B, N) bool, real instance columns. Only matters with ``noise_embed``
            (an instance absent from the whole clip may then receive noise); default: columns
            present in at least one frame.

    Returns:
        :class:`CTCLOutput`; ``.losses()`` gives the weighted ``loss_reid`` / ``loss_aux_reid``.
    """
    if config.num_negatives is None and pred_embeds.dim() == 4:
        config = replace(config, num_negatives=config.resolved_num_negatives(pred_embeds.shape[2]))
    _check_inputs(pred_embeds, gt_to_query, valid, config)
    if chooser is None:
        chooser = RandomChooser(generator)
    device = pred_embeds.device
    batch, frames, queries, channels = pred_embeds.shape
    num_instances = gt_to_query.shape[2]
    real = valid.any(dim=1) if instance_mask is None else instance_mask.to(device=device, dtype=torch.bool)
    if real.shape != (batch, num_instances):
        raise ValueError(f"instance_mask must be ({batch},{num_instances}), got {tuple(real.shape)}")

    with torch.autocast(device_type=device.type, enabled=False):
        embeds = pred_embeds if pred_embeds.dtype == torch.float64 else pred_embeds.float()
        present = valid & real[:, None, :]  # (B, T, N)
        query = torch.where(real[:, None, :], gt_to_query.to(device), torch.zeros_like(gt_to_query, device=device))
        real_queries = query[real[:, None, :].expand_as(query)]
        if real_queries.numel() and (int(real_queries.min()) < 0 or int(real_queries.max()) >= queries):
            raise ValueError(f"gt_to_query holds query ids outside 0..{queries - 1}")

        # Step 1: the memory bank. in_memory marks frames whose anchor is stored (present, or
        # absent but given a noise embedding).
        in_memory, memory_query = present, query
        if config.noise_embed:
            absent_calls = torch.nonzero(~valid & real[:, None, :])  # (A, 3) in (b, t, n) order
            noise = chooser.noise_queries(absent_calls, queries).to(device)
            noisy = absent_calls[noise >= 0]
            in_memory = present.clone()
            in_memory[noisy[:, 0], noisy[:, 1], noisy[:, 2]] = True
            memory_query = query.clone()
            memory_query[noisy[:, 0], noisy[:, 1], noisy[:, 2]] = noise[noise >= 0]
        # Row (b, t, q) of the flattened embeddings is b*T*Q + t*Q + q.
        frame_offset = (torch.arange(batch * frames, device=device) * queries).view(batch, frames, 1)
        memory_embeds = embeds.reshape(-1, channels).index_select(0, (memory_query + frame_offset).flatten())
        memory_embeds = memory_embeds.view(batch, frames, num_instances, channels)  # (B, T, N, C)

        calls = torch.nonzero(present)  # (V, 3): one negatives draw per present (t, n)
        call_table = torch.cat([calls, query[calls[:, 0], calls[:, 1], calls[:, 2]][:, None]], dim=1)
        drawn = chooser.negatives(call_table, config.num_negatives).to(device)
        if drawn.shape != (calls.shape[0], config.num_negatives):
            raise ValueError(f"chooser returned negatives of shape {tuple(drawn.shape)}, expected {(calls.shape[0], config.num_negatives)}")
        # Stored negatives as a mask over the Q queries of the frame: all Q where not present.
        stored_negatives = torch.ones(batch, frames, num_instances, queries, dtype=torch.bool, device=device)
        rows = torch.arange(calls.shape[0], device=device)[:, None].expand_as(drawn)
        sampled = torch.zeros(calls.shape[0], queries, dtype=torch.bool, device=device)
        sampled[rows, drawn] = True
        stored_negatives[calls[:, 0], calls[:, 1], calls[:, 2]] = sampled

        # Step 2: the items.
        last_before, first_after, exist_after_quirk = _positive_frames(in_memory)
        exist_before = last_before >= 0
        has_positive = exist_before | (exist_after_quirk & (first_after < frames))
        frame_index = torch.arange(frames, device=device)[None, :, None]
        is_item = in_memory & (frame_index >= 1) & has_positive
        item_b, item_t, item_n = torch.nonzero(is_item).unbind(1)  # (M,) each, released order
        num_items = item_b.shape[0]
        if num_items == 0:
            zero = pred_embeds.sum() * 0
            empty = torch.zeros(0, device=device, dtype=embeds.dtype)
            return CTCLOutput(
                loss_reid=zero * config.reid_weight,
                loss_aux_reid=zero * config.aux_reid_weight,
                loss_reid_unweighted=zero,
                loss_aux_reid_unweighted=zero,
                items=torch.zeros(0, 6, dtype=torch.int64, device=device),
                num_candidates=torch.zeros(0, dtype=torch.int64, device=device),
                item_loss_reid=empty,
                item_loss_aux_reid=empty,
                fused_positive=torch.zeros(0, dtype=torch.bool, device=device),
            )

        # Every (b, t, n) is evaluated densely and non-items are masked out, so the backward pass
        # has a handful of (B, T, N, ...) nodes instead of per-item gathers. Dense tensors use
        # "row" s = t - 1: row s pairs the anchor of frame s+1 with what was stored at frame s
        # (its negatives, the fused memory), so only the small anchor-side tensors are shifted
        # and the large embeddings stay contiguous for the batched product (no transposed copy).
        def next_frame(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            return torch.cat([x[:, 1:], torch.full_like(x[:, :1], fill)], dim=1)

        item_rows = next_frame(is_item.to(embeds.dtype)).bool()  # (B, T, N)
        positive_frame = torch.where(exist_before, last_before, first_after).clamp(0, frames - 1)  # (B, T, N)
        positives = memory_embeds.gather(1, positive_frame[..., None].expand(-1, -1, -1, channels))  # (B, T, N, C)
        use_fused = torch.zeros_like(is_item)
        needs_fused = config.momentum_embed or config.negatives == "paper"
        fused = _fused_memory(memory_embeds, in_memory) if needs_fused else None  # (B, T, N, C)
        positive_rows = next_frame(positives)
        if config.momentum_embed:
            fused_calls = torch.nonzero(is_item & exist_before)  # (F, 3) in (b, t, n) order
            flags = chooser.fused_positive(fused_calls).to(device=device, dtype=torch.bool)
            use_fused[fused_calls[:, 0], fused_calls[:, 1], fused_calls[:, 2]] = flags
            # The fused memory after frame t-1 sits in row s = t-1 unshifted.
            positive_rows = torch.where(next_frame(use_fused.to(embeds.dtype)).bool()[..., None], fused, positive_rows)

        eps = 1e-12  # F.normalize's
        anchor_rows = next_frame(memory_embeds)  # (B, T, N, C)
        anchor_norm = anchor_rows.norm(dim=-1).clamp_min(eps)  # (B, T, N)
        positive_norm = positive_rows.norm(dim=-1).clamp_min(eps)
        # Norm as sqrt of the clamped sum of squares (F.normalize's value) and the product as
        # embeds @ anchors^T: both have a cheaper backward over the large (B, T, Q, C) tensor
        # than linalg.vector_norm and anchors @ embeds^T.
        query_norm = (embeds * embeds).sum(-1).clamp_min(eps * eps).sqrt()  # (B, T, Q)
        negative_dots = torch.matmul(embeds, anchor_rows.transpose(-1, -2)).transpose(-1, -2)  # (B, T, N, Q)
        negative_cos = negative_dots / (anchor_norm[..., None] * query_norm[:, :, None, :])
        negative_mask = stored_negatives  # (B, T, N, Q): stored at frame s for instance n
        if config.negatives == "paper":
            # Other instances' fused memory embeddings after frame t-1, where they exist.
            seen = in_memory.long().cummax(dim=1).values.bool()  # (B, T, N): in memory by frame s
            memory_dots = torch.matmul(anchor_rows, fused.transpose(-1, -2))  # (B, T, N, N)
            fused_norm = fused.norm(dim=-1).clamp_min(eps)
            memory_cos = memory_dots / (anchor_norm[..., None] * fused_norm[:, :, None, :])
            not_self = ~torch.eye(num_instances, dtype=torch.bool, device=device)
            other_mask = seen[:, :, None, :] & not_self  # (B, T, N, N)
            negative_dots = torch.cat([negative_dots, memory_dots], dim=-1)
            negative_cos = torch.cat([negative_cos, memory_cos], dim=-1)
            negative_mask = torch.cat([negative_mask, other_mask], dim=-1)

        positive_dots = (positive_rows * anchor_rows).sum(-1)  # (B, T, N)
        positive_cos = positive_dots / (positive_norm * anchor_norm)
        margins = torch.where(negative_mask, negative_dots - positive_dots[..., None], float("-inf"))
        row_loss = torch.logsumexp(torch.cat([margins, torch.zeros_like(margins[..., :1])], dim=-1), dim=-1)
        candidates = 1 + negative_mask.sum(-1)  # (B, T, N)
        negative_sq = torch.where(negative_mask, negative_cos.square(), 0.0).sum(-1)
        row_aux = ((positive_cos - 1).square() + negative_sq) / candidates.to(embeds.dtype)

        loss_reid = torch.where(item_rows, row_loss, 0.0).sum() / num_items
        loss_aux = torch.where(item_rows, row_aux, 0.0).sum() / num_items
        row = (item_b, item_t - 1, item_n)
        all_queries = (~present[row]).long()
        items = torch.stack([item_b, item_t, item_n, positive_frame[item_b, item_t, item_n], item_t - 1, all_queries], dim=1)
        return CTCLOutput(
            loss_reid=loss_reid * config.reid_weight,
            loss_aux_reid=loss_aux * config.aux_reid_weight,
            loss_reid_unweighted=loss_reid,
            loss_aux_reid_unweighted=loss_aux,
            items=items,
            num_candidates=candidates[row],
            item_loss_reid=row_loss[row],
            item_loss_aux_reid=row_aux[row],
            fused_positive=use_fused[item_b, item_t, item_n],
        )


class CTCLLoss(nn.Module):
    """Module form of :func:`ctcl_loss` holding its config; returns the weighted losses."""

    def __init__(self, config: CTCLConfig = CTCLConfig()) -> None:
        super().__init__()
        self.config = config

    def compute(
        self,
        pred_embeds: torch.Tensor,
        gt_to_query: torch.Tensor,
        valid: torch.Tensor,
        *,
        chooser: CTCLChooser | None = None,
        generator: torch.Generator | None = None,
        instance_mask: torch.Tensor | None = None,
    ) -> CTCLOutput:
        return ctcl_loss(
            pred_embeds, gt_to_query, valid, self.config, chooser=chooser, generator=generator, instance_mask=instance_mask
        )

    def forward(
        self,
        pred_embeds: torch.Tensor,
        gt_to_query: torch.Tensor,
        valid: torch.Tensor,
        *,
        chooser: CTCLChooser | None = None,
        generator: torch.Generator | None = None,
        instance_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.compute(
            pred_embeds, gt_to_query, valid, chooser=chooser, generator=generator, instance_mask=instance_mask
        ).losses()
