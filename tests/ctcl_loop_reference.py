"""Plain-loop CT-CL: a step-by-step mirror of the released algorithm (memory bank of per-instance
tracklets, one Python iteration per frame / instance / item), written for this project as the
oracle of the tests and the baseline of ``benchmarks/bench_ctcl.py``.

It shares only the config and the chooser protocol with ``models/ctcl.py``; every choice goes
through the chooser one call at a time, in the released call order, so a chooser with one
stream per kind of choice gives both implementations the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.ctcl import CTCLChooser, CTCLConfig


@dataclass
class _Tracklet:
    """Per-instance training memory of one clip (the released ``TrainTracklet``)."""

    anchors: list = field(default_factory=list)  # per frame: (1, C) or None
    negatives: list = field(default_factory=list)  # per frame: (K, C) or (Q, C)
    fused: torch.Tensor | None = None
    fused_history: list = field(default_factory=list)  # per frame: fused after that frame (or None)
    present_count: int = 0

    def update(self, anchor, negatives):
        self.anchors.append(anchor)
        self.negatives.append(negatives)
        if anchor is None:
            self.fused_history.append(self.fused)
            return
        if self.present_count == 0:
            self.fused = anchor
        else:
            earlier = torch.cat([a for a in self.anchors[:-1] if a is not None], dim=0)
            similarity = torch.sum(F.normalize(earlier, dim=-1) @ F.normalize(anchor.squeeze(), dim=-1)) / self.present_count
            beta = max(0, similarity)
            self.fused = (1 - beta) * self.fused + beta * anchor
        self.fused_history.append(self.fused)
        self.present_count += 1

    def exist_before(self, t):
        return t != sum(1 for a in self.anchors[:t] if a is None)

    def exist_after(self, t):  # the released quirk: compares t with the absent count after t
        return t != sum(1 for a in self.anchors[t + 1 :] if a is None)


def _item_losses(positive, negatives, anchor):
    """Loss of one item as the released ``loss_reid`` computes it (expanded pairwise logsumexp)."""
    candidates = torch.cat([positive, negatives], dim=0)  # (1+K, C)
    label = torch.zeros(candidates.shape[0], dtype=torch.int64, device=candidates.device)
    label[0] = 1
    dots = (candidates @ anchor.T).T  # (1, 1+K)
    cos = (F.normalize(candidates, dim=1) @ F.normalize(anchor, dim=1).T).T
    label = label[None]
    pos_inds, neg_inds = label == 1, label == 0
    pred_pos = dots * pos_inds.to(dots.dtype)
    pred_neg = dots * neg_inds.to(dots.dtype)
    pred_pos[neg_inds] = pred_pos[neg_inds] + float("inf")
    pred_neg[pos_inds] = pred_neg[pos_inds] + float("-inf")
    pos_expand = torch.repeat_interleave(pred_pos, dots.shape[1], dim=1)
    neg_expand = pred_neg.repeat(1, dots.shape[1])
    x = F.pad(neg_expand - pos_expand, (0, 1), "constant", 0)
    loss = torch.logsumexp(x, dim=1)[0]
    aux = ((cos - label) ** 2).mean()
    return loss, aux, candidates.shape[0]


def ctcl_loop(
    embeds_per_clip: list[torch.Tensor],
    gt_to_query_per_clip: list[torch.Tensor],
    valid_per_clip: list[torch.Tensor],
    config: CTCLConfig,
    chooser: CTCLChooser,
) -> dict:
    """Released-order CT-CL over clips of their own instance counts.

    embeds_per_clip[b]: (T, Q, C); gt_to_query_per_clip[b], valid_per_clip[b]: (T, N_b).
    Returns the unweighted and weighted losses and per-item tables.
    """
    items, item_loss, item_aux, candidates_count, fused_flags = [], [], [], [], []
    for b, (embeds, gt_to_query, valid) in enumerate(zip(embeds_per_clip, gt_to_query_per_clip, valid_per_clip)):
        frames, queries = embeds.shape[:2]
        num_instances = gt_to_query.shape[1]
        bank = [_Tracklet() for _ in range(num_instances)]
        # Step 1: fill the memory bank.
        for t in range(frames):
            for n in range(num_instances):
                if valid[t, n]:
                    q = int(gt_to_query[t, n])
                    anchor = embeds[t, q][None]
                    call = torch.tensor([[b, t, n, q]])
                    chosen = chooser.negatives(call, config.num_negatives)[0].tolist()
                    population = set(range(config.num_negatives + 1)) - {q}
                    assert set(chosen) <= population and len(set(chosen)) == config.num_negatives
                    negatives = embeds[t, sorted(chosen)]
                else:
                    anchor = None
                    negatives = embeds[t]
                    if config.noise_embed:
                        noise = int(chooser.noise_queries(torch.tensor([[b, t, n]]), queries)[0])
                        if noise >= 0:
                            anchor = negatives[noise][None]
                bank[n].update(anchor, negatives)
        # Step 2: one item per frame t >= 1 and instance in memory at t, when it has a positive.
        for t in range(1, frames):
            for n in range(num_instances):
                tracklet = bank[n]
                if tracklet.anchors[t] is None:
                    continue
                anchor = tracklet.anchors[t]
                positive, positive_frame, fused_flag = None, -1, False
                if tracklet.exist_before(t):
                    if config.momentum_embed and bool(chooser.fused_positive(torch.tensor([[b, t, n]]))[0]):
                        positive, fused_flag = tracklet.fused_history[t - 1], True
                        positive_frame = max(s for s in range(t) if tracklet.anchors[s] is not None)
                    else:
                        for s in range(t - 1, -1, -1):
                            if tracklet.anchors[s] is not None:
                                positive, positive_frame = tracklet.anchors[s], s
                                break
                elif tracklet.exist_after(t):
                    for s in range(t + 1, frames):
                        if tracklet.anchors[s] is not None:
                            positive, positive_frame = tracklet.anchors[s], s
                            break
                if positive is None:
                    continue
                negatives = tracklet.negatives[t - 1]
                if config.negatives == "paper":
                    others = [
                        bank[m].fused_history[t - 1]
                        for m in range(num_instances)
                        if m != n and bank[m].fused_history[t - 1] is not None
                    ]
                    if others:
                        negatives = torch.cat([negatives] + others, dim=0)
                loss, aux, count = _item_losses(positive, negatives, anchor)
                item_loss.append(loss)
                item_aux.append(aux)
                candidates_count.append(count)
                fused_flags.append(fused_flag)
                items.append([b, t, n, positive_frame, t - 1, int(not bool(valid[t - 1, n]))])
    if not items:
        zero = sum(e.sum() for e in embeds_per_clip) * 0
        return {"loss_reid_unweighted": zero, "loss_aux_reid_unweighted": zero, "items": torch.zeros(0, 6, dtype=torch.int64),
                "loss_reid": zero, "loss_aux_reid": zero, "item_loss_reid": torch.zeros(0), "item_loss_aux_reid": torch.zeros(0),
                "num_candidates": torch.zeros(0, dtype=torch.int64), "fused_positive": torch.zeros(0, dtype=torch.bool)}
    loss_reid = sum(item_loss) / len(items)
    loss_aux = sum(item_aux) / len(items)
    return {
        "loss_reid_unweighted": loss_reid,
        "loss_aux_reid_unweighted": loss_aux,
        "loss_reid": loss_reid * config.reid_weight,
        "loss_aux_reid": loss_aux * config.aux_reid_weight,
        "items": torch.tensor(items, dtype=torch.int64),
        "item_loss_reid": torch.stack(item_loss),
        "item_loss_aux_reid": torch.stack(item_aux),
        "num_candidates": torch.tensor(candidates_count, dtype=torch.int64),
        "fused_positive": torch.tensor(fused_flags, dtype=torch.bool),
    }
