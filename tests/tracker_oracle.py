"""Straightforward loop implementation of the released tracker and video post-processing.

It follows the released algorithm step by step (per-pair mask IoU, per-detection greedy matching,
per-tracklet memory objects, a dict of per-frame lists, per-entry chunked upsampling) and is slow on
purpose: the tests use it as an oracle on synthetic videos and ``benchmarks/bench_tracker.py`` uses
it as the baseline the vectorised implementation is timed against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from models.tracking import TrackerConfig


class _OracleTracklet:
    def __init__(self, momentum: float, max_cache: int):
        self.scores: list[torch.Tensor] = []
        self.embeds: list[torch.Tensor] = []
        self.frames: list[int] = []
        self.momentum_embed = None
        self.guided_embed = None
        self.seen = 0
        self.momentum = momentum
        self.max_cache = max_cache

    def add(self, score, embed, frame):
        self.scores.append(score)
        self.embeds.append(embed)
        self.frames.append(frame)
        if self.seen == 0:
            self.momentum_embed = embed
            self.guided_embed = embed
        else:
            self.momentum_embed = (1 - self.momentum) * self.momentum_embed + self.momentum * embed
            previous = torch.stack(self.embeds[:-1])
            cos = torch.einsum("bc,c->b", F.normalize(previous, dim=-1), F.normalize(embed, dim=-1))
            beta = max(0, torch.sum(cos) / (len(self.embeds) - 1))
            self.guided_embed = (1 - beta) * self.guided_embed + beta * embed
        self.seen += 1
        if len(self.scores) > self.max_cache:
            self.scores.pop(0)
            self.embeds.pop(0)

    def embed_for(self, embed_type: str):
        if embed_type == "similarity_guided":
            return self.guided_embed
        if embed_type == "momentum":
            return self.momentum_embed
        if embed_type == "last":
            return self.embeds[-1]
        scores = torch.stack(self.scores)
        n = scores.shape[0]
        weights = scores + torch.tensor([(i + 1) * (1.0 / n) for i in range(n)], dtype=torch.float64).to(scores)
        return (torch.stack(self.embeds) * weights[:, None]).sum(0) / weights.sum()


def _pair_iou(a, b):
    a, b = a.to(torch.int8), b.to(torch.int8)
    inter = (a * b).sum()
    union = (a + b - a * b).sum()
    return (inter + 1e-6) / (union + 1e-6)


def oracle_track(config: TrackerConfig, pred_logits, pred_masks, pred_embeds):
    """Returns (assigned ids per frame (T,Q) list of lists, live ids per frame, track ids, logits, masks)."""
    num_frames, num_queries = pred_logits.shape[:2]
    memory: dict[int, _OracleTracklet] = {}
    next_id = 0
    video: dict[int, dict[str, list]] = {}
    assigned_all, live_all = [], []
    for t in range(num_frames):
        probs = F.softmax(pred_logits[t], dim=-1)[:, :-1]
        best = probs.max(dim=1).values
        _, order = torch.sort(best, dim=0, descending=True)
        scores = best[order]
        selected = scores > config.inference_select_thr
        if selected.sum() == 0:
            selected[0] = True
        sel = order[selected]
        sel_scores = scores[selected]
        binary = pred_masks[t][sel].sigmoid() > 0.5
        keep = [True] * len(sel)
        for i in range(len(sel) - 1):
            if not keep[i]:
                continue
            for j in range(i + 1, len(sel)):
                if keep[j] and _pair_iou(binary[i], binary[j]) > config.mask_nms_thr:
                    keep[j] = False
        kept = sel[torch.tensor(keep)]
        kept_scores = sel_scores[torch.tensor(keep)]
        embeds = pred_embeds[t][kept]
        ids = [-1] * len(kept)
        if next_id == 0:
            for i in range(len(kept)):
                if kept_scores[i] > config.init_score_thr:
                    ids[i] = next_id
                    next_id += 1
        else:
            bank_ids = list(memory.keys())
            bank = torch.stack([memory[k].embed_for(config.embed_type) for k in bank_ids])
            seen = torch.tensor([memory[k].seen for k in bank_ids])
            if config.match_metric == "bisoftmax":
                sim = embeds @ bank.t()
                match = (sim.softmax(dim=1) + sim.softmax(dim=0)) / 2
            else:
                match = F.normalize(embeds, dim=1) @ F.normalize(bank, dim=1).t()
            if config.match_type == "greedy":
                for i in range(len(kept)):
                    row = match[i]
                    above = row > config.match_score_thr
                    if config.frame_weight and above.sum() > 1:
                        w = seen[above].to(row)
                        weighted = row.clone()
                        weighted[above] = row[above] * w
                        weighted[~above] = row[~above] * w.mean()
                        value, col = torch.max(weighted, dim=0)
                    else:
                        value, col = torch.max(row, dim=0)
                    if value > config.match_score_thr:
                        ids[i] = bank_ids[int(col)]
                        match[:i, col] = 0
                        match[i + 1:, col] = 0
            else:
                rows, cols = linear_sum_assignment(-match.numpy())
                for r, c in zip(rows, cols):
                    if not match[r, c] < config.match_score_thr:
                        ids[r] = bank_ids[c]
            for i in range(len(kept)):
                if ids[i] == -1 and kept_scores[i] > config.init_score_thr:
                    ids[i] = next_id
                    next_id += 1
        for i in range(len(kept)):
            if ids[i] < 0:
                continue
            if ids[i] not in memory:
                memory[ids[i]] = _OracleTracklet(config.momentum, config.max_cache)
            memory[ids[i]].add(kept_scores[i], embeds[i], t)
        for k in [k for k, v in memory.items() if t - v.frames[-1] > config.num_dead_frames]:
            del memory[k]
        assigned = [-3] * num_queries
        for q in sel.tolist():
            assigned[q] = -2
        for q, i in zip(kept.tolist(), ids):
            assigned[q] = i
        assigned_all.append(assigned)
        live_all.append(list(memory.keys()))
        for q, i in zip(kept.tolist(), ids):
            if i < 0:
                continue
            if i not in video:
                video[i] = {"logits": [None] * t, "masks": [None] * t}
            video[i]["logits"].append(pred_logits[t][q])
            video[i]["masks"].append(pred_masks[t][q])
        for v in video.values():
            if len(v["masks"]) < t + 1:
                v["logits"].append(None)
                v["masks"].append(None)
        if t > config.noise_frame_num:
            for k in list(video.keys()):
                masks = video[k]["masks"]
                valid = sum(m is not None for m in masks)
                trailing = 0
                for m in reversed(masks):
                    if m is not None:
                        break
                    trailing += 1
                if trailing >= config.none_frame_num and valid < config.suppress_frame_num:
                    del video[k]
    track_ids, logits, masks = [], [], []
    h, w = pred_masks.shape[-2:]
    for k, v in video.items():
        track_ids.append(k)
        present = torch.stack([x for x in v["logits"] if x is not None])
        logits.append(present.mean(0) if config.temporal_score_type == "mean" else present.max(0).values)
        masks.append(torch.stack([m if m is not None else pred_masks.new_zeros(h, w) for m in v["masks"]]))
    if track_ids:
        return assigned_all, live_all, torch.tensor(track_ids), torch.stack(logits), torch.stack(masks)
    return (assigned_all, live_all, torch.zeros(0, dtype=torch.long), pred_logits.new_zeros(0, pred_logits.shape[-1]),
            pred_masks.new_zeros(0, num_frames, h, w))


def oracle_inference_video(pred_logits, pred_masks, padded_size, image_size, output_size, num_topk,
                           instance_chunk=5, frame_chunk=5):
    """The released per-entry chunked post-processing. Returns scores (k,), labels (k,), masks (k,T,H,W)."""
    num_classes = pred_logits.shape[1] - 1
    probs = F.softmax(pred_logits, dim=-1)[:, :-1]
    scores, index = probs.flatten().topk(num_topk, sorted=True)
    labels = index % num_classes
    masks = pred_masks[index // num_classes]
    num_entries, num_frames = masks.shape[:2]
    out_masks = []
    for start in range(0, num_entries, instance_chunk):
        chunk = masks[start:start + instance_chunk]
        numerator = torch.zeros(chunk.shape[0])
        denominator = torch.zeros(chunk.shape[0])
        pieces = []
        for f0 in range(0, num_frames, frame_chunk):
            m = F.interpolate(chunk[:, f0:f0 + frame_chunk], size=tuple(padded_size), mode="bilinear",
                              align_corners=False)
            m = m[:, :, :image_size[0], :image_size[1]]
            m = F.interpolate(m, size=tuple(output_size), mode="bilinear", align_corners=False)
            b = (m > 0.0).float()
            numerator += (m.sigmoid() * b).flatten(1).sum(1)
            denominator += b.flatten(1).sum(1)
            pieces.append(b.bool())
        scores[start:start + instance_chunk] *= numerator / (denominator + 1e-6)
        out_masks.append(torch.cat(pieces, dim=1))
    return scores, labels, torch.cat(out_masks)


def synthetic_detections(num_frames: int, num_queries: int = 30, num_classes: int = 40, embed_dim: int = 64,
                         mask_size: tuple[int, int] = (24, 40), num_objects: int = 6, num_distractors: int = 3,
                         seed: int = 0):
    """Per-frame network outputs of a synthetic video (pred_logits (T,Q,K+1), pred_masks (T,Q,h,w),
    pred_embeds (T,Q,C)): moving disc objects that appear and disappear, a near-duplicate of one
    object per frame (for NMS), mid-score distractors (short tracks) and low-score queries."""
    g = torch.Generator().manual_seed(seed)
    h, w = mask_size
    T, Q, K = num_frames, num_queries, num_classes
    if num_objects + 1 + num_distractors > Q:
        raise ValueError("synthetic_detections: not enough queries")
    logits = torch.randn(T, Q, K + 1, generator=g)
    logits[..., K] += 8.0                       # most queries: no object
    masks = torch.randn(T, Q, h, w, generator=g) - 6.0
    embeds = torch.randn(T, Q, embed_dim, generator=g)
    identity = torch.randn(num_objects, embed_dim, generator=g)
    classes = torch.randint(0, K, (num_objects,), generator=g)
    start = torch.rand(num_objects, 2, generator=g) * torch.tensor([h, w])
    velocity = (torch.rand(num_objects, 2, generator=g) - 0.5) * 2
    radius = 2 + torch.rand(num_objects, generator=g) * min(h, w) / 4
    first = torch.randint(0, max(1, T // 2), (num_objects,), generator=g)
    first[:2] = 0
    length = torch.randint(max(1, T // 3), T + 1, (num_objects,), generator=g)
    length[:2] = T
    ys = torch.arange(h).float()[:, None]
    xs = torch.arange(w).float()[None, :]
    for t in range(T):
        slots = torch.randperm(Q, generator=g)
        used = 0
        for o in range(num_objects):
            if not (first[o] <= t < first[o] + length[o]):
                continue
            q = int(slots[used]); used += 1
            center = start[o] + velocity[o] * t
            dist = ((ys - center[0]) ** 2 + (xs - center[1]) ** 2).sqrt()
            masks[t, q] = (radius[o] - dist) * 1.5 + torch.randn(h, w, generator=g) * 0.3
            logits[t, q, K] = 0.0
            logits[t, q, classes[o]] = 5.0 + torch.rand((), generator=g) * 2
            embeds[t, q] = identity[o] + 0.3 * torch.randn(embed_dim, generator=g)
            if o == 0:  # near-duplicate with a lower score, removed by NMS
                d = int(slots[used]); used += 1
                masks[t, d] = masks[t, q] + torch.randn(h, w, generator=g) * 0.1
                logits[t, d] = logits[t, q]
                logits[t, d, classes[o]] -= 2.0
                embeds[t, d] = embeds[t, q] + 0.1 * torch.randn(embed_dim, generator=g)
        for _ in range(num_distractors):
            q = int(slots[used]); used += 1
            logits[t, q, K] = 2.5
            logits[t, q, int(torch.randint(0, K, (), generator=g))] = 2.0
            cy, cx = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
            masks[t, q, max(0, cy - 2):cy + 2, max(0, cx - 2):cx + 2] = 3.0
    return logits, masks, embeds
