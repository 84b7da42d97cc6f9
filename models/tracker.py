"""Online tracker of CTVIS: per-frame detections -> video-level tracks, at parity with the released
``SimpleTracker`` + ``MemoryBank`` (IDOL-style association with a memory bank of re-id embeddings).

The tracker is a streaming state object, :class:`VideoTracker`: ``step()`` consumes ONE frame and
``current_tracks()`` / ``finalize()`` return the video-level outputs for the frames seen so far.
:func:`track_video` runs it over a whole video. Shapes use fixed letters: T frames, Q queries,
K classes (K+1 logits, no-object last), C embedding channels, h, w mask size, M memory-bank
tracklets, N output tracks.

Where the work goes (and why it is fast):

* heavy tensor work stays on the input's device and is batched: score sort, mask binarisation,
  the pairwise mask IoU (an exact area/box bound, then integer intersections of the few pairs that
  can overlap), the bi-softmax / cosine match matrix, the memory-bank update of all matched
  tracklets at once;
* the inherently sequential decisions (greedy NMS over the QxQ overlap matrix, greedy matching in
  score order) run on small host copies of those matrices, one transfer each per frame;
* the video bookkeeping (which track is present in which frame, noise-track deletion) is a few
  integer arrays, not per-frame Python dictionaries of masks.

Semantics follow the released code, including its quirks (documented where they matter):
``-3/-2/-1`` diagnostic codes, "keep the top detection when none passes the select threshold",
NMS IoU ``(inter + 1e-6) / (union + 1e-6)`` on ``sigmoid > 0.5`` masks, frame-weighted greedy
matching compared against the threshold after weighting, a noise-deleted track that comes back
restarting as a new output row, and the memory bank keeping tracks the noise filter dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

# Diagnostic codes of ``FrameTrackResult.assigned_ids`` (as recorded by the reference fixture).
BELOW_SELECT_THR = -3
REMOVED_BY_NMS = -2
NO_TRACK_ID = -1

# Below this logit the float32 ``sigmoid(x) > 0.5`` test can disagree with ``x > 0`` (sigmoid rounds
# to exactly 0.5 for 0 < x < ~6e-8); above it both agree. Only such pixels pay for a sigmoid.
_SIGMOID_AMBIGUOUS_LOGIT = 1e-4


@dataclass(frozen=True)
class TrackerConfig:
    """Options of the online tracker; field names are the released config keys in snake_case."""

    num_classes: int = 40
    match_metric: Literal["bisoftmax", "cosine"] = "bisoftmax"
    match_score_thr: float = 0.3
    match_type: Literal["greedy", "hungarian"] = "greedy"
    frame_weight: bool = True
    temporal_score_type: Literal["mean", "max"] = "mean"
    inference_select_thr: float = 0.01
    init_score_thr: float = 0.01
    mask_nms_thr: float = 0.6
    noise_frame_num: int = 8
    # Kept for config compatibility: the released tracker reads it but never uses it.
    noise_frame_ratio: float = 0.4
    suppress_frame_num: int = 3
    none_frame_num: int = 2
    # "temporally_weighted" is the released "temporally_weighted_softmax" (a score- and
    # recency-weighted mean of the cached embeddings; there is no softmax in it).
    embed_type: Literal["similarity_guided", "momentum", "last", "temporally_weighted"] = "similarity_guided"
    momentum: float = 0.75
    num_dead_frames: int = 20
    max_cache: int = 10

    def __post_init__(self) -> None:
        checks = {
            "match_metric": (self.match_metric, ("bisoftmax", "cosine")),
            "match_type": (self.match_type, ("greedy", "hungarian")),
            "temporal_score_type": (self.temporal_score_type, ("mean", "max")),
            "embed_type": (self.embed_type, ("similarity_guided", "momentum", "last", "temporally_weighted")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"TrackerConfig.{name}={value!r}; expected one of {allowed}")
        if self.num_classes < 1:
            raise ValueError(f"TrackerConfig.num_classes must be >= 1, got {self.num_classes}")
        if self.max_cache < 1:
            raise ValueError(f"TrackerConfig.max_cache must be >= 1, got {self.max_cache}")


@dataclass(frozen=True)
class FrameTrackResult:
    """What one ``VideoTracker.step`` decided (host tensors, for diagnostics and streaming use).

    assigned_ids: (Q,) long, per query in input order: the track id, or -3 (score below
        ``inference_select_thr``), -2 (removed by mask NMS), -1 (kept but got no id).
    query_indices: (n,) long, the queries that got a track id this frame, in score order.
    track_ids: (n,) long, their track ids.
    live_ids: (M,) long, memory-bank tracklet ids after the frame (insertion order).
    """

    frame_index: int
    assigned_ids: Tensor
    query_indices: Tensor
    track_ids: Tensor
    live_ids: Tensor


@dataclass(frozen=True)
class VideoTracks:
    """Video-level tracker output, in the order the released ``video_dict`` holds them.

    track_ids: (N,) long (host). pred_logits: (N, K+1), the temporal score (mean or max) of the
    logits over the frames where the track is present. pred_masks: (N, T, h, w) mask logits, zero
    in frames where the track is absent.
    """

    track_ids: Tensor
    pred_logits: Tensor
    pred_masks: Tensor

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])


def binarize_mask_logits(mask_logits: Tensor) -> Tensor:
    """``mask_logits.sigmoid() > 0.5`` bit for bit, without a sigmoid on every pixel.

    ``x <= 0`` gives ``sigmoid(x) <= 0.5`` and ``x > 1e-4`` gives ``sigmoid(x) > 0.5`` in float32;
    only the rare logits in between are evaluated with the real sigmoid.
    """
    binary = mask_logits > 0
    # Almost never true: one comparison and an early-exit equality instead of boolean indexing.
    if not torch.equal(binary, mask_logits > _SIGMOID_AMBIGUOUS_LOGIT):
        ambiguous = binary & (mask_logits <= _SIGMOID_AMBIGUOUS_LOGIT)
        binary[ambiguous] = mask_logits[ambiguous].sigmoid() > 0.5
    return binary


def mask_nms_keep(binary_masks: Tensor, nms_thr: float) -> np.ndarray:
    """Greedy mask NMS of score-sorted masks; returns a host bool keep vector (n,).

    binary_masks: (n, h, w) bool, sorted by descending score. Mask j is dropped when a kept mask
    i < j has IoU ``(inter + 1e-6) / (union + 1e-6) > nms_thr`` (the released formula, so two
    empty masks have IoU 1). The suppression is a cheap sequential pass over the n x n overlap
    matrix, built without a per-pair loop:

    * an upper bound of every pair's IoU from integer areas and bounding boxes
      (inter <= min(area_i, area_j, box overlap), union >= max(area_i, area_j)) rules out most pairs;
    * the remaining pairs get their exact integer intersection, by one gathered AND-count when
      they are few, else by one matmul of the flattened masks.
    """
    num, height, width = binary_masks.shape
    keep = np.ones(num, dtype=bool)
    if num <= 1:
        return keep
    device = binary_masks.device
    flat = binary_masks.reshape(num, -1)
    area = flat.sum(dim=1)                                                   # (n,) long
    rows_on = binary_masks.any(dim=2)                                        # (n, h)
    cols_on = binary_masks.any(dim=1)                                        # (n, w)
    row_index = torch.arange(height, device=device)
    col_index = torch.arange(width, device=device)
    top = torch.where(rows_on, row_index, height).amin(1)
    bottom = torch.where(rows_on, row_index, -1).amax(1)
    left = torch.where(cols_on, col_index, width).amin(1)
    right = torch.where(cols_on, col_index, -1).amax(1)
    box_h = (torch.minimum(bottom[:, None], bottom[None]) - torch.maximum(top[:, None], top[None]) + 1).clamp(min=0)
    box_w = (torch.minimum(right[:, None], right[None]) - torch.maximum(left[:, None], left[None]) + 1).clamp(min=0)
    inter_bound = torch.minimum(box_h * box_w, torch.minimum(area[:, None], area[None]))
    union_bound = torch.maximum(area[:, None], area[None])
    iou_bound = (inter_bound.double() + 1e-6) / (union_bound.double() + 1e-6)
    # The float32 IoU is within a few ulps of the exact one: a 1e-6 slack keeps the bound safe.
    candidates = torch.triu(iou_bound > nms_thr - 1e-6, diagonal=1)
    pairs = candidates.nonzero()                                             # (P, 2)
    if pairs.shape[0] == 0:
        return keep
    if pairs.shape[0] <= num:
        first, second = pairs[:, 0], pairs[:, 1]
        intersection = (flat[first] & flat[second]).sum(dim=1)
    else:
        # 0/1 products summed in float32 are exact integers (up to 2^24 pixels per mask).
        flat_float = flat.to(torch.float32)
        intersection_all = (flat_float @ flat_float.T).round_().to(torch.long)
        first, second = pairs[:, 0], pairs[:, 1]
        intersection = intersection_all[first, second]
    union = area[first] + area[second] - intersection
    iou = (intersection + 1e-6) / (union + 1e-6)
    overlapping = pairs[iou > nms_thr].cpu().numpy()
    if overlapping.shape[0] == 0:
        return keep
    overlaps = np.zeros((num, num), dtype=bool)
    overlaps[overlapping[:, 0], overlapping[:, 1]] = True
    for i in np.unique(overlapping[:, 0]):
        if keep[i]:
            keep &= ~overlaps[i]
    return keep


def greedy_match(match_scores: np.ndarray, exist_frames: np.ndarray, score_thr: float,
                 frame_weight: bool) -> np.ndarray:
    """Greedy association in score order, as the released tracker does it.

    match_scores: (n, M) float32 (rows = detections in descending score order, columns = memory
    tracklets); exist_frames: (M,) frames each tracklet has been seen. Returns (n,) the matched
    column per row or -1. When a row has more than one score above the threshold and
    ``frame_weight`` is set, those scores are multiplied by the tracklets' exist_frames and the
    other ones by the mean of those weights; the *weighted* maximum is compared with the
    threshold. A matched column is zeroed for every other row.
    """
    scores = match_scores.astype(np.float32, copy=True)
    weights = exist_frames.astype(np.float32)
    matched = np.full(scores.shape[0], -1, dtype=np.int64)
    threshold = np.float32(score_thr)
    # Scores only ever decrease (columns get zeroed), so a row whose initial maximum is not above
    # the threshold can never match: only the other rows need the sequential pass.
    candidate_rows = np.flatnonzero(scores.max(axis=1) > threshold) if scores.shape[1] else []
    for row in candidate_rows:
        row_scores = scores[row]
        above = row_scores > threshold
        if frame_weight and np.count_nonzero(above) > 1:
            valid_weights = weights[above]
            weighted = row_scores.copy()
            weighted[above] = row_scores[above] * valid_weights
            mean_weight = np.float32(valid_weights.sum(dtype=np.float32) / np.float32(valid_weights.size))
            weighted[~above] = row_scores[~above] * mean_weight
            column = int(np.argmax(weighted))
            best = weighted[column]
        else:
            column = int(np.argmax(row_scores))
            best = row_scores[column]
        if best > threshold:
            matched[row] = column
            saved = row_scores[column]
            scores[:, column] = 0
            scores[row, column] = saved
    return matched


def hungarian_match(match_scores: np.ndarray, score_thr: float) -> np.ndarray:
    """Optimal assignment maximising the total score; pairs scoring below the threshold are
    dropped (``score < thr``, so a score equal to the threshold is kept, as released)."""
    matched = np.full(match_scores.shape[0], -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(-match_scores)
    accepted = ~(match_scores[rows, cols] < np.float32(score_thr))
    matched[rows[accepted]] = cols[accepted]
    return matched


def _temporal_weights(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.range(0, 1, 1/length)[1:]`` of the released code: (1/length, 2/length, ..., 1)."""
    return (torch.arange(1, length + 1, dtype=torch.float64, device=device) * (1.0 / length)).to(dtype)


class _MemoryBank:
    """The tracklet memory: one row per live tracklet, in insertion order.

    Embedding caches are right-aligned (the newest embedding in the last slot) so that appending is
    a shift, dropping the oldest when more than ``max_cache`` are held, exactly like the released
    list ``append`` + ``pop(0)``.
    """

    def __init__(self, config: TrackerConfig, embed_dim: int, dtype: torch.dtype, device: torch.device):
        self.config = config
        self.ids = np.zeros(0, dtype=np.int64)           # (M,) tracklet ids
        self.exist_frames = np.zeros(0, dtype=np.int64)  # (M,) frames seen
        self.last_frame = np.zeros(0, dtype=np.int64)    # (M,) last frame seen
        self.cache_len = np.zeros(0, dtype=np.int64)     # (M,) valid cache slots
        self.embed_cache = torch.zeros(0, config.max_cache, embed_dim, dtype=dtype, device=device)  # (M, L, C)
        self.score_cache = torch.zeros(0, config.max_cache, dtype=dtype, device=device)             # (M, L)
        self.fused_embeds = torch.zeros(0, embed_dim, dtype=dtype, device=device)  # (M, C) sim.-guided / momentum

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def slot_of(self, track_ids: np.ndarray) -> np.ndarray:
        """Row of each id in the bank, -1 when absent."""
        if len(self) == 0:
            return np.full(track_ids.shape, -1, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        position = np.searchsorted(self.ids, track_ids, sorter=order).clip(max=len(self) - 1)
        slot = order[position]
        return np.where(self.ids[slot] == track_ids, slot, -1)

    def matching_embeds(self) -> Tensor:
        """(M, C) the embedding each tracklet is matched with."""
        embed_type = self.config.embed_type
        if embed_type in ("similarity_guided", "momentum"):
            return self.fused_embeds
        if embed_type == "last":
            return self.embed_cache[:, -1]
        # temporally_weighted: weights = cached scores + (1/c, ..., 1) over the c cached frames.
        max_cache = self.config.max_cache
        slot_valid = torch.from_numpy(
            np.arange(max_cache)[None, :] >= (max_cache - self.cache_len)[:, None]).to(self.score_cache.device)
        temporal = torch.zeros_like(self.score_cache)
        for length in np.unique(self.cache_len):  # at most max_cache distinct lengths
            rows = torch.from_numpy(np.flatnonzero(self.cache_len == length)).to(temporal.device)
            temporal[rows, max_cache - int(length):] = _temporal_weights(
                int(length), temporal.dtype, temporal.device)
        weights = torch.where(slot_valid, self.score_cache + temporal, torch.zeros((), dtype=temporal.dtype,
                                                                                    device=temporal.device))
        return (self.embed_cache * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True)

    def update(self, track_ids: np.ndarray, scores: Tensor, embeds: Tensor, frame_index: int) -> None:
        """Record one frame's detections. track_ids: (n,) unique; scores: (n,); embeds: (n, C)."""
        if track_ids.size == 0:
            return
        config = self.config
        slots = self.slot_of(track_ids)
        new = slots < 0
        if new.any():
            num_new = int(new.sum())
            slots[new] = np.arange(len(self), len(self) + num_new)
            self.ids = np.concatenate([self.ids, track_ids[new]])
            self.exist_frames = np.concatenate([self.exist_frames, np.zeros(num_new, dtype=np.int64)])
            self.last_frame = np.concatenate([self.last_frame, np.zeros(num_new, dtype=np.int64)])
            self.cache_len = np.concatenate([self.cache_len, np.zeros(num_new, dtype=np.int64)])
            self.embed_cache = torch.cat([self.embed_cache, self.embed_cache.new_zeros(
                num_new, *self.embed_cache.shape[1:])])
            self.score_cache = torch.cat([self.score_cache, self.score_cache.new_zeros(
                num_new, config.max_cache)])
            self.fused_embeds = torch.cat([self.fused_embeds, self.fused_embeds.new_zeros(
                num_new, self.fused_embeds.shape[1])])
        device = embeds.device
        slots_t = torch.from_numpy(slots).to(device)
        first_time = torch.from_numpy(self.exist_frames[slots] == 0).to(device)

        if config.embed_type == "similarity_guided":
            # beta = max(0, mean cosine(new, cached previous embeds)); fused = (1-beta)*fused + beta*new.
            cache = self.embed_cache[slots_t]                                   # (n, L, C)
            cos = torch.einsum("nlc,nc->nl", F.normalize(cache, dim=-1), F.normalize(embeds, dim=-1))
            valid = torch.from_numpy(
                np.arange(config.max_cache)[None, :] >= (config.max_cache - self.cache_len[slots])[:, None]
            ).to(device)
            count = torch.from_numpy(self.cache_len[slots].clip(min=1)).to(device)
            similarity = torch.where(valid, cos, torch.zeros((), dtype=cos.dtype, device=device)).sum(1) / count
            beta = torch.where(similarity > 0, similarity, torch.zeros((), dtype=cos.dtype, device=device))[:, None]
            fused = (1 - beta) * self.fused_embeds[slots_t] + beta * embeds
            self.fused_embeds[slots_t] = torch.where(first_time[:, None], embeds, fused)
        elif config.embed_type == "momentum":
            fused = (1 - config.momentum) * self.fused_embeds[slots_t] + config.momentum * embeds
            self.fused_embeds[slots_t] = torch.where(first_time[:, None], embeds, fused)

        # Append to the right-aligned caches; the oldest slot falls off.
        self.embed_cache[slots_t] = torch.cat([self.embed_cache[slots_t, 1:], embeds[:, None]], dim=1)
        self.score_cache[slots_t] = torch.cat([self.score_cache[slots_t, 1:], scores[:, None]], dim=1)
        self.cache_len[slots] = np.minimum(self.cache_len[slots] + 1, config.max_cache)
        self.exist_frames[slots] += 1
        self.last_frame[slots] = frame_index

    def drop_dead(self, frame_index: int) -> None:
        alive = frame_index - self.last_frame <= self.config.num_dead_frames
        if alive.all():
            return
        rows = torch.from_numpy(np.flatnonzero(alive)).to(self.embed_cache.device)
        self.ids, self.exist_frames = self.ids[alive], self.exist_frames[alive]
        self.last_frame, self.cache_len = self.last_frame[alive], self.cache_len[alive]
        self.embed_cache, self.score_cache = self.embed_cache[rows], self.score_cache[rows]
        self.fused_embeds = self.fused_embeds[rows]


class VideoTracker:
    """Streaming online tracker for one video.

    >>> tracker = VideoTracker(TrackerConfig(num_classes=40))
    >>> for frame in frames:                      # frame outputs of the network, one frame at a time
    ...     result = tracker.step(frame["pred_logits"], frame["pred_masks"], frame["pred_embeds"])
    >>> tracks = tracker.finalize()

    ``device``: where the tracker state lives (default: the device of the first frame);
    ``mask_storage_device``: where per-frame masks are kept until the end of the video (default
    the same; "cpu" bounds accelerator memory on long videos, like the released TO_CPU_FRAMES).
    """

    def __init__(self, config: TrackerConfig, device: torch.device | str | None = None,
                 mask_storage_device: torch.device | str | None = None):
        self.config = config
        self.device = torch.device(device) if device is not None else None
        self.mask_storage_device = torch.device(mask_storage_device) if mask_storage_device is not None else None
        self._memory: _MemoryBank | None = None
        self._next_id = 0
        self._num_frames = 0
        self._finalized = False
        self._mask_shape: tuple[int, int] | None = None
        self._logits_dtype: torch.dtype | None = None
        # Tracks recorded per frame (ids in score order) with their logits and masks.
        self._frame_ids: list[np.ndarray] = []
        self._frame_logits: list[Tensor] = []
        self._frame_masks: list[Tensor] = []
        # Rows of the released video_dict ("entries"), in creation order. A track deleted as noise
        # that shows up again starts a fresh entry at that frame.
        self._entry_track = np.zeros(0, dtype=np.int64)
        self._entry_start = np.zeros(0, dtype=np.int64)
        self._entry_count = np.zeros(0, dtype=np.int64)
        self._entry_last = np.zeros(0, dtype=np.int64)
        self._entry_alive = np.zeros(0, dtype=bool)
        self._entry_of_track = np.full(0, -1, dtype=np.int64)  # track id -> live entry or -1

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def live_ids(self) -> Tensor:
        """(M,) ids of the tracklets currently in the memory bank, in insertion order."""
        ids = self._memory.ids if self._memory is not None else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(ids.copy())

    def _check_frame(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> None:
        where = f"frame {self._num_frames}"
        if pred_logits.dim() != 2 or pred_logits.shape[1] != self.config.num_classes + 1:
            raise ValueError(f"{where}: pred_logits must be (Q, K+1={self.config.num_classes + 1}), "
                             f"got {tuple(pred_logits.shape)}")
        num_queries = pred_logits.shape[0]
        if num_queries == 0:
            raise ValueError(f"{where}: no queries")
        if pred_masks.dim() != 3 or pred_masks.shape[0] != num_queries:
            raise ValueError(f"{where}: pred_masks must be (Q={num_queries}, h, w), got {tuple(pred_masks.shape)}")
        if pred_embeds.dim() != 2 or pred_embeds.shape[0] != num_queries:
            raise ValueError(f"{where}: pred_embeds must be (Q={num_queries}, C), got {tuple(pred_embeds.shape)}")
        if self._mask_shape is not None and tuple(pred_masks.shape[1:]) != self._mask_shape:
            raise ValueError(f"{where}: mask size {tuple(pred_masks.shape[1:])} differs from the "
                             f"first frame's {self._mask_shape}")
        if self._memory is not None and pred_embeds.shape[1] != self._memory.embed_cache.shape[2]:
            raise ValueError(f"{where}: embedding size {pred_embeds.shape[1]} differs from the first frame's "
                             f"{self._memory.embed_cache.shape[2]}")

    @torch.no_grad()
    def step(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> FrameTrackResult:
        """Track one frame. pred_logits (Q, K+1), pred_masks (Q, h, w) logits, pred_embeds (Q, C)."""
        if self._finalized:
            raise RuntimeError("VideoTracker.step() after finalize(); start a new VideoTracker per video")
        self._check_frame(pred_logits, pred_masks, pred_embeds)
        config = self.config
        frame_index = self._num_frames
        if self.device is None:
            self.device = pred_logits.device
        if self.mask_storage_device is None:
            self.mask_storage_device = self.device
        pred_logits = pred_logits.to(self.device)
        pred_masks = pred_masks.to(self.device)
        pred_embeds = pred_embeds.to(self.device)
        if self._memory is None:
            self._memory = _MemoryBank(config, pred_embeds.shape[1], pred_embeds.dtype, self.device)
            self._mask_shape = tuple(pred_masks.shape[1:])
            self._logits_dtype = pred_logits.dtype
        num_queries = pred_logits.shape[0]

        # 1. sort by the best class score; keep those above the select threshold (a prefix of the
        #    sorted order), or the top one when none passes.
        max_scores = pred_logits.softmax(dim=-1)[:, :-1].max(dim=1).values
        sorted_scores, order = torch.sort(max_scores, dim=0, descending=True)
        num_selected = max(1, int((sorted_scores > config.inference_select_thr).sum()))
        candidates = order[:num_selected]

        # 2. greedy mask NMS over the candidates.
        keep = mask_nms_keep(binarize_mask_logits(pred_masks[candidates]), config.mask_nms_thr)
        kept_pos = np.flatnonzero(keep)
        kept = candidates[torch.from_numpy(kept_pos).to(self.device)]
        kept_scores = sorted_scores[:num_selected][torch.from_numpy(kept_pos).to(self.device)]
        kept_scores_host = kept_scores.cpu().numpy()

        # 3. associate with the memory bank.
        track_ids = np.full(kept_pos.size, -1, dtype=np.int64)
        if self._next_id > 0 and len(self._memory) > 0:
            matched = self._match(pred_embeds[kept])
            has_match = matched >= 0
            track_ids[has_match] = self._memory.ids[matched[has_match]]
        # A never-started tracker only initialises; afterwards unmatched confident detections start
        # new tracklets. (The released code crashes when every tracklet has died; here the empty
        # bank simply matches nothing.)
        new = (track_ids == -1) & (kept_scores_host > np.float32(config.init_score_thr))
        track_ids[new] = np.arange(self._next_id, self._next_id + int(new.sum()))
        self._next_id += int(new.sum())

        has_id = track_ids >= 0
        rows = torch.from_numpy(np.flatnonzero(has_id)).to(self.device)
        ids = track_ids[has_id]
        self._memory.update(ids, kept_scores[rows], pred_embeds[kept][rows], frame_index)
        self._memory.drop_dead(frame_index)

        # 4. video bookkeeping.
        tracked_queries = kept[rows]
        self._frame_ids.append(ids)
        self._frame_logits.append(pred_logits[tracked_queries])
        self._frame_masks.append(pred_masks[tracked_queries].to(self.mask_storage_device))
        self._record_entries(ids, frame_index)
        self._num_frames += 1

        order_host = order.cpu().numpy()
        assigned = np.full(num_queries, BELOW_SELECT_THR, dtype=np.int64)
        assigned[order_host[:num_selected]] = REMOVED_BY_NMS
        assigned[order_host[:num_selected][kept_pos]] = track_ids
        return FrameTrackResult(
            frame_index=frame_index,
            assigned_ids=torch.from_numpy(assigned),
            query_indices=torch.from_numpy(order_host[:num_selected][kept_pos][has_id].copy()),
            track_ids=torch.from_numpy(ids.copy()),
            live_ids=self.live_ids(),
        )

    def _match(self, embeds: Tensor) -> np.ndarray:
        """Column of the memory bank matched by each detection (score order), or -1."""
        config = self.config
        memory_embeds = self._memory.matching_embeds()
        if config.match_metric == "bisoftmax":
            similarity = torch.mm(embeds, memory_embeds.t())
            match_scores = (similarity.softmax(dim=1) + similarity.softmax(dim=0)) / 2
        else:
            match_scores = torch.mm(F.normalize(embeds, p=2, dim=1), F.normalize(memory_embeds, p=2, dim=1).t())
        match_scores = match_scores.float().cpu().numpy()
        if config.match_type == "greedy":
            return greedy_match(match_scores, self._memory.exist_frames, config.match_score_thr,
                                config.frame_weight)
        return hungarian_match(match_scores, config.match_score_thr)

    def _record_entries(self, ids: np.ndarray, frame_index: int) -> None:
        """Update the released ``video_dict`` bookkeeping and drop noise entries."""
        config = self.config
        if self._entry_of_track.size < self._next_id:
            grown = np.full(max(self._next_id, 2 * self._entry_of_track.size), -1, dtype=np.int64)
            grown[: self._entry_of_track.size] = self._entry_of_track
            self._entry_of_track = grown
        entries = self._entry_of_track[ids]
        new = entries < 0
        if new.any():
            num_new = int(new.sum())
            created = np.arange(self._entry_track.size, self._entry_track.size + num_new)
            entries[new] = created
            self._entry_of_track[ids[new]] = created
            self._entry_track = np.concatenate([self._entry_track, ids[new]])
            self._entry_start = np.concatenate([self._entry_start, np.full(num_new, frame_index)])
            self._entry_count = np.concatenate([self._entry_count, np.zeros(num_new, dtype=np.int64)])
            self._entry_last = np.concatenate([self._entry_last, np.full(num_new, frame_index)])
            self._entry_alive = np.concatenate([self._entry_alive, np.ones(num_new, dtype=bool)])
        self._entry_count[entries] += 1
        self._entry_last[entries] = frame_index
        if frame_index > config.noise_frame_num:
            # Trailing empty frames = frame_index - last frame present.
            noise = (self._entry_alive
                     & (frame_index - self._entry_last >= config.none_frame_num)
                     & (self._entry_count < config.suppress_frame_num))
            if noise.any():
                self._entry_alive[noise] = False
                self._entry_of_track[self._entry_track[noise]] = -1

    @torch.no_grad()
    def current_tracks(self) -> VideoTracks:
        """The video-level outputs for the frames seen so far (see :class:`VideoTracks`)."""
        if self._num_frames == 0:
            raise RuntimeError("VideoTracker.current_tracks(): no frame has been tracked yet")
        num_frames = self._num_frames
        height, width = self._mask_shape
        live_entries = np.flatnonzero(self._entry_alive)
        num_tracks = live_entries.size
        track_ids = self._entry_track[live_entries]
        row_of_entry = np.full(self._entry_track.size, -1, dtype=np.int64)
        row_of_entry[live_entries] = np.arange(num_tracks)

        record_ids = np.concatenate(self._frame_ids)
        record_frames = np.repeat(np.arange(num_frames), [ids.size for ids in self._frame_ids])
        record_entry = self._entry_of_track[record_ids] if record_ids.size else record_ids
        record_row = np.where(record_entry >= 0, row_of_entry[record_entry.clip(min=0)], -1)
        # A record belongs to its track's live entry only from the entry's start frame on.
        record_row = np.where((record_row >= 0) & (record_frames >= self._entry_start[record_entry.clip(min=0)]),
                              record_row, -1)
        used = np.flatnonzero(record_row >= 0)
        # Order the used records by (row, frame) so each row's frames are contiguous and in time order.
        used = used[np.lexsort((record_frames[used], record_row[used]))]
        rows, frames = record_row[used], record_frames[used]

        all_logits = torch.cat(self._frame_logits)
        all_masks = torch.cat(self._frame_masks)
        used_t = torch.from_numpy(used)
        logits = all_logits[used_t.to(all_logits.device)]
        masks = all_masks[used_t.to(all_masks.device)]

        pred_masks = all_masks.new_zeros(num_tracks, num_frames, height, width)
        pred_masks[torch.from_numpy(rows).to(masks.device), torch.from_numpy(frames).to(masks.device)] = masks
        counts = np.bincount(rows, minlength=num_tracks)
        if self.config.temporal_score_type == "mean":
            # One reduction per track over its own frames: this is the released torch.stack(..).mean(0)
            # bit for bit (a padded or scattered sum reduces in a different order).
            pred_logits = torch.stack([segment.mean(0) for segment in torch.split(logits, counts.tolist())]) \
                if num_tracks else all_logits.new_zeros(0, all_logits.shape[1])
        else:
            padded = all_logits.new_full((num_tracks, num_frames, all_logits.shape[1]), float("-inf"))
            padded[torch.from_numpy(rows).to(logits.device), torch.from_numpy(frames).to(logits.device)] = logits
            pred_logits = padded.max(dim=1).values
        return VideoTracks(torch.from_numpy(track_ids.copy()), pred_logits, pred_masks)

    def finalize(self) -> VideoTracks:
        """End of the video: the final outputs; the tracker accepts no more frames."""
        tracks = self.current_tracks()
        self._finalized = True
        return tracks


def track_video(config: TrackerConfig, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor,
                device: torch.device | str | None = None,
                mask_storage_device: torch.device | str | None = None,
                ) -> tuple[VideoTracks, list[FrameTrackResult]]:
    """Whole-video tracking on the streaming tracker.

    pred_logits (T, Q, K+1), pred_masks (T, Q, h, w), pred_embeds (T, Q, C).
    Returns the video tracks and the per-frame results.
    """
    if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_embeds.dim() != 3:
        raise ValueError("track_video expects pred_logits (T,Q,K+1), pred_masks (T,Q,h,w), pred_embeds (T,Q,C); "
                         f"got {tuple(pred_logits.shape)}, {tuple(pred_masks.shape)}, {tuple(pred_embeds.shape)}")
    if not (pred_logits.shape[0] == pred_masks.shape[0] == pred_embeds.shape[0]):
        raise ValueError("track_video: pred_logits, pred_masks and pred_embeds disagree on T: "
                         f"{pred_logits.shape[0]}, {pred_masks.shape[0]}, {pred_embeds.shape[0]}")
    tracker = VideoTracker(config, device=device, mask_storage_device=mask_storage_device)
    results = [tracker.step(pred_logits[t], pred_masks[t], pred_embeds[t]) for t in range(pred_logits.shape[0])]
    return tracker.finalize(), results
