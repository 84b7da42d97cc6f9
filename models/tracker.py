"""Online tracker of CTVIS: per-frame detections -> video-level tracks, at parity with the released
``SimpleTracker`` + ``MemoryBank`` (IDOL-style association with a memory bank of re-id embeddings).

The tracker is a streaming state object, :class:`VideoTracker`: ``step()`` consumes ONE frame and
``current_tracks()`` / ``finalize()`` return the video-level outputs for the frames seen so far.
:func:`track_video` runs it over a whole video. Shapes use fixed letters: T frames, Q queries,
K classes (K+1 logits, no-object last), C embedding channels, h, w mask size, M memory-bank
tracklets, N output tracks.

Where the work goes (and why it is fast):

* per frame, only the selected detections' masks are read (one gather), binarised and counted
  per row; the pairwise mask IoU is exact from the areas for pairs sharing no row, bounded for the
  rest, and an integer intersection is computed only for the few pairs the bound cannot settle.
  On CPU these full-mask passes run on numpy views (see ``_numpy_view``);
* the bi-softmax / cosine match matrix and the memory-bank update of all matched tracklets are
  a few batched ops on the state's device; the bank lives in preallocated slots. On CPU (float32 /
  float64) everything exact in numpy (sorting distinct scores, gathers, scatters, elementwise
  arithmetic) runs on numpy views, and only the ops numpy rounds differently (softmax, norm,
  matrix products, sums) stay torch calls: about 7 torch calls per frame instead of ~40;
* the inherently sequential decisions (greedy NMS over the QxQ overlap matrix, greedy matching in
  score order) run on small host copies of those matrices, one transfer each per frame; greedy
  matching weights every candidate row at once and recomputes only rows a taken column affects;
* nothing grows with the video inside a step: the tracked masks are kept as one small tensor per
  frame and :class:`VideoTracks` reads them in place (the dense (N, T, h, w) tensor is only built
  when asked for); the video bookkeeping (which track is present in which frame, noise-track
  deletion) is a few integer arrays.

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
# to exactly 0.5 for 0 < x < ~6e-8); above it both agree. Only such pixels pay for a sigmoid. Lower
# precisions round sigmoid(x) = 0.5 + x/4 to 0.5 up to x ~ eps: see _ambiguous_logit.
_SIGMOID_AMBIGUOUS_LOGIT = 1e-4


def _ambiguous_logit(dtype: torch.dtype) -> float:
    return max(_SIGMOID_AMBIGUOUS_LOGIT, 8 * torch.finfo(dtype).eps)


def _numpy_view(tensor: Tensor) -> np.ndarray | None:
    """Zero-copy numpy view of a CPU tensor (dtype numpy knows), else None.

    The tracker's full-mask passes (gather, thresholds, pixel counts) are simple elementwise work on
    a few MB per frame. On CPU, numpy does them single-threaded in 0.04-0.13 ms each where torch
    takes 0.3 ms on one thread and 4-12 ms on two threads of a loaded machine (each op opens an
    OpenMP parallel region whose barrier waits for a descheduled thread; measured). The results
    are the same booleans and integer counts; accelerators keep the torch path.
    """
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return None
    return tensor.detach().numpy()


def _exact_math_view(tensor: Tensor) -> np.ndarray | None:
    """Numpy view of a CPU float32/float64 tensor, else None.

    Elementwise float arithmetic (+, -, *, /, comparisons, where) is correctly rounded IEEE in both
    numpy and torch, so running it on these views gives torch's values bit for bit without paying
    a torch dispatch per op. Reductions, exp/softmax and matrix products round differently in
    numpy (measured: most elements differ by an ulp), so those stay torch calls. Half precisions
    stay on the torch path (their elementwise arithmetic need not round alike)."""
    if tensor.dtype not in (torch.float32, torch.float64):
        return None
    return _numpy_view(tensor)


def _gather_rows(tensor: Tensor, index: np.ndarray) -> Tensor:
    """tensor[index] along dim 0 (a copy), index a host int64 array."""
    array = _numpy_view(tensor)
    if array is not None:
        return torch.from_numpy(np.take(array, index, axis=0))
    return tensor.index_select(0, torch.from_numpy(index).to(tensor.device))


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


class VideoTracks:
    """Video-level tracker output, in the order the released ``video_dict`` holds them.

    track_ids: (N,) long (host). pred_logits: (N, K+1), the temporal score (mean or max) of the
    logits over the frames where the track is present. pred_masks: (N, T, h, w) mask logits, zero
    in frames where the track is absent.

    The tracker builds it in a compact form, without the dense (N, T, h, w) tensor (435 MB for 42
    tracks x 100 frames of 120x216 masks, most of it zeros): ``frame_masks``, one (n_t, h, w)
    tensor per frame with the masks tracked in that frame, and ``mask_rows`` (N, T) long (host),
    the row of each track in its frame's tensor or -1 where it is absent. ``pred_masks`` is then
    materialised on first access (and kept); the post-processing (:func:`inference_tracks`) reads
    the compact form directly. ``VideoTracks(track_ids, pred_logits, pred_masks)`` builds the
    dense form.
    """

    def __init__(self, track_ids: Tensor, pred_logits: Tensor, pred_masks: Tensor | None = None, *,
                 frame_masks: tuple[Tensor, ...] | None = None, mask_rows: Tensor | None = None):
        if (pred_masks is None) == (frame_masks is None or mask_rows is None):
            raise ValueError("VideoTracks needs either pred_masks (N, T, h, w) or both frame_masks and mask_rows")
        if pred_masks is not None and pred_masks.dim() != 4:
            raise ValueError(f"VideoTracks: pred_masks must be (N, T, h, w), got {tuple(pred_masks.shape)}")
        if mask_rows is not None and (mask_rows.dim() != 2 or mask_rows.shape[1] != len(frame_masks)
                                      or mask_rows.shape[0] != track_ids.shape[0]):
            raise ValueError(f"VideoTracks: mask_rows must be (N={track_ids.shape[0]}, T={len(frame_masks)}), "
                             f"got {tuple(mask_rows.shape)}")
        self.track_ids = track_ids
        self.pred_logits = pred_logits
        self._pred_masks = pred_masks
        self.frame_masks = tuple(frame_masks) if frame_masks is not None else None
        self.mask_rows = mask_rows.cpu() if mask_rows is not None else None

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])

    def __repr__(self) -> str:
        return (f"VideoTracks(tracks={len(self)}, frames={self.num_frames}, mask_size={self.mask_size}, "
                f"{'dense' if self.frame_masks is None else 'compact'})")

    @property
    def num_frames(self) -> int:
        return int(self._pred_masks.shape[1]) if self.frame_masks is None else len(self.frame_masks)

    @property
    def mask_size(self) -> tuple[int, int]:
        source = self._pred_masks if self.frame_masks is None else self.frame_masks[0]
        return int(source.shape[-2]), int(source.shape[-1])

    @property
    def recorded(self) -> np.ndarray:
        """(N, T) bool: where a track has a mask (every frame for the dense form)."""
        if self.mask_rows is None:
            return np.ones(self._pred_masks.shape[:2], dtype=bool)
        return self.mask_rows.numpy() >= 0

    def planes(self, tracks: np.ndarray, frames: np.ndarray) -> Tensor:
        """(p, h, w) mask logits of the given (track row, frame) pairs, which must be recorded."""
        if self.frame_masks is None:
            device = self._pred_masks.device
            return self._pred_masks[torch.from_numpy(tracks).to(device), torch.from_numpy(frames).to(device)]
        rows = self.mask_rows.numpy()[tracks, frames]
        if (rows < 0).any():
            raise ValueError("VideoTracks.planes: a requested track is absent in that frame")
        if rows.size == 0:
            height, width = self.mask_size
            return self.frame_masks[0].new_zeros(0, height, width)
        # Each plane is one row of its frame's tensor; the frames differ, so one index per plane.
        return torch.stack([self.frame_masks[frame][row] for frame, row in zip(frames.tolist(), rows.tolist())])

    @property
    def pred_masks(self) -> Tensor:
        """(N, T, h, w) mask logits, zero where a track is absent (materialised once)."""
        if self._pred_masks is None:
            height, width = self.mask_size
            first = self.frame_masks[0]
            dense = first.new_zeros(len(self), self.num_frames, height, width)
            rows = self.mask_rows.numpy()
            # One copy per frame of the tracks present in it (not per track and frame).
            for frame, masks in enumerate(self.frame_masks):
                present = np.flatnonzero(rows[:, frame] >= 0)
                if present.size:
                    source_rows = torch.from_numpy(rows[present, frame]).to(masks.device)
                    dense[torch.from_numpy(present).to(dense.device), frame] = masks.index_select(0, source_rows)
            self._pred_masks = dense
        return self._pred_masks


def binarize_mask_logits(mask_logits: Tensor) -> Tensor:
    """``mask_logits.sigmoid() > 0.5`` bit for bit, without a sigmoid on every pixel.

    ``x <= 0`` gives ``sigmoid(x) <= 0.5`` and ``x > 1e-4`` gives ``sigmoid(x) > 0.5`` in float32;
    only the rare logits in between are evaluated with the real sigmoid.
    """
    ambiguous_logit = _ambiguous_logit(mask_logits.dtype)
    array = _numpy_view(mask_logits)
    if array is not None:
        binary = array > 0
        strict = array > ambiguous_logit
        # strict is a subset of binary: equal counts mean equal masks (almost always).
        if np.count_nonzero(binary) != np.count_nonzero(strict):
            ambiguous = binary & ~strict
            binary[ambiguous] = (torch.from_numpy(array[ambiguous]).sigmoid() > 0.5).numpy()
        return torch.from_numpy(binary)
    binary = mask_logits > 0
    strict = mask_logits > ambiguous_logit
    if _count_true(binary) != _count_true(strict):
        ambiguous = binary & ~strict
        binary[ambiguous] = mask_logits[ambiguous].sigmoid() > 0.5
    return binary


def _count_true(mask: Tensor) -> int:
    accumulator = torch.int32 if mask.numel() < 2 ** 31 else torch.int64
    return int(mask.view(torch.uint8).sum(dtype=accumulator))


def _host(tensor: Tensor) -> np.ndarray:
    """A numpy view (CPU) or copy (accelerator) of a small tensor."""
    return tensor.detach().cpu().numpy()


def _host_threshold(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: comparing a host copy (float32/float64) with it gives what
    torch's ``tensor > value`` gives on the tensor itself (the scalar is cast to the tensor dtype)."""
    return float(torch.tensor(value, dtype=dtype))


def _float32_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """The released ``(inter + 1e-6) / (union + 1e-6)`` in float32 (what torch computes for integer
    counts plus a Python float), from exact integer counts."""
    eps = np.float32(1e-6)
    return (intersection.astype(np.float32) + eps) / (union.astype(np.float32) + eps)


def _row_pixel_counts(binary: np.ndarray) -> np.ndarray:
    """(n, h) int32 number of True pixels per mask row of a (n, h, w) bool array.

    When a row is a whole number of 8-byte words (w % 8 == 0, C-contiguous, w < 2048), the row's
    words are summed as uint64: byte lane k of the sum counts the pixels at positions = k mod 8
    (at most w / 8 < 256 each, so no lane carries into the next), and the row count is the sum of
    the 8 lanes. Twice as fast as summing the bytes to int32, which widens every byte (measured)."""
    num, height, width = binary.shape
    if width % 8 or width >= 2048 or not binary.flags.c_contiguous:
        return binary.view(np.uint8).sum(axis=2, dtype=np.int32)
    lane_sums = binary.view(np.uint64).reshape(num, height, width // 8).sum(axis=2, dtype=np.uint64)
    return lane_sums.view(np.uint8).reshape(num, height, 8).sum(axis=2, dtype=np.int32)


def mask_nms_keep(binary_masks: Tensor, nms_thr: float) -> np.ndarray:
    """Greedy mask NMS of score-sorted masks; returns a host bool keep vector (n,).

    binary_masks: (n, h, w) bool, sorted by descending score. Mask j is dropped when a kept mask
    i < j has IoU ``(inter + 1e-6) / (union + 1e-6) > nms_thr`` (the released float32 formula, so
    two empty masks have IoU 1). Built without a per-pair loop and with one pass over the masks
    (per-row pixel counts) plus one over the few pairs that need an exact intersection:

    * pairs that share no row (every pair with an empty mask among them) have intersection 0:
      their IoU is exact from the areas alone;
    * an upper bound of every other pair's IoU (inter <= sum over rows of the smaller row count)
      rules out most of the rest;
    * the remaining pairs get their exact integer intersection, by one gathered AND-count when
      they are few, else by one matmul of the flattened masks.

    The suppression itself is a cheap sequential pass over the host n x n overlap matrix.
    """
    num, height, width = binary_masks.shape
    keep = np.ones(num, dtype=bool)
    if num <= 1:
        return keep
    # Per-row pixel counts are the only full pass: int32 sums of the bytes (a bool sum, or a uint8
    # sum to int64, first converts the whole tensor; measured several times slower).
    array = _numpy_view(binary_masks)
    if array is not None:
        row_counts = _row_pixel_counts(array)                                        # (n, h)
    else:
        row_counts = _host(binary_masks.view(torch.uint8).sum(dim=2, dtype=torch.int32))
    area = row_counts.sum(axis=1, dtype=np.int64)                                # (n,) exact
    threshold = np.float32(nms_thr)
    overlaps = np.zeros((num, num), dtype=bool)
    # inter <= min(a_i, a_j) and union >= max(a_i, a_j) bound every IoU by the area ratio; only the
    # pairs that bound leaves open get the row bound below (usually a small fraction of them). The
    # float32 IoU is within a few ulps of the exact one: a 1e-6 slack keeps every bound safe.
    smaller, larger = np.minimum(area[:, None], area[None]), np.maximum(area[:, None], area[None])
    first, second = np.nonzero(np.triu((smaller + 1e-6) / (larger + 1e-6) > nms_thr - 1e-6, k=1))
    # Masks i and j can only intersect on rows where both have pixels, and at most
    # min(count_i, count_j) pixels per such row: an upper bound of the intersection that is 0 exactly
    # when the masks share no row (every pair with an empty mask among them).
    inter_bound = np.minimum(row_counts[first], row_counts[second]).sum(axis=1, dtype=np.int64)   # (p,)
    area_sum = area[first] + area[second]
    # Disjoint rows: intersection 0, the IoU is exact from the areas.
    disjoint = inter_bound == 0
    overlaps[first[disjoint], second[disjoint]] = (
        _float32_iou(np.zeros(1, np.int64), area_sum[disjoint]) > threshold)
    # IoU <= bound / (a_i + a_j - bound).
    iou_bound = (inter_bound + 1e-6) / (area_sum - inter_bound + 1e-6)
    undecided = ~disjoint & (iou_bound > nms_thr - 1e-6)
    first, second = first[undecided], second[undecided]
    if first.size:
        flat = binary_masks.reshape(num, -1)
        if first.size <= num and array is not None:
            flat_array = array.reshape(num, -1)
            intersection = (flat_array[first] & flat_array[second]).view(np.uint8).sum(axis=1, dtype=np.int64)
        elif first.size <= num:
            index = torch.from_numpy(np.stack([first, second])).to(binary_masks.device)
            intersection = _host(torch.count_nonzero(flat[index[0]] & flat[index[1]], dim=1))
        else:
            # 0/1 products summed in float32 are exact integers (up to 2^24 pixels per mask).
            flat_float = flat.to(torch.float32)
            intersection = _host((flat_float @ flat_float.T).round_().to(torch.long))[first, second]
        union = area[first] + area[second] - intersection
        overlaps[first, second] = _float32_iou(intersection, union) > threshold
    for i in np.flatnonzero(overlaps.any(axis=1)):
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
    if scores.shape[1] == 0:
        return matched
    # Scores only ever decrease (columns get zeroed), so a row whose initial maximum is not above
    # the threshold can never match: only the other rows need the sequential pass.
    rows = np.flatnonzero(scores.max(axis=1) > threshold)
    if rows.size == 0:
        return matched
    # The weighted scores of all candidate rows at once, as each row would compute them now. They
    # stay valid for a later row while no column of its above-threshold set is taken: a taken
    # column elsewhere in the row scores 0 (both weighted and not, given threshold >= 0), which is
    # patched in by zeroing that column. A row whose set lost a column is recomputed alone.
    # The mean weight is a sum of integer frame counts: exact in float32 (below 2^24) in any order.
    exact_sums = float(weights.sum(dtype=np.float64)) < 2 ** 24
    if threshold < 0 or not exact_sums:
        for row in rows:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
        return matched
    candidates = scores[rows]                                                   # (k, M)
    above = candidates > threshold
    if frame_weight:
        num_above = np.count_nonzero(above, axis=1)
        weighted_rows = num_above > 1
        mean_weight = ((above * weights).sum(axis=1, dtype=np.float32)
                       / np.maximum(num_above, 1).astype(np.float32))
        row_weights = np.where(above, weights, mean_weight[:, None])
        weighted = np.where(weighted_rows[:, None], candidates * row_weights, candidates)
    else:
        weighted_rows = np.zeros(rows.size, dtype=bool)
        weighted = candidates
    stale = np.zeros(rows.size, dtype=bool)
    for position, row in enumerate(rows.tolist()):
        if stale[position]:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
            column = matched[row]
            if column < 0:
                continue
        else:
            column = int(np.argmax(weighted[position]))
            if not weighted[position, column] > threshold:
                continue
            matched[row] = column
            saved = scores[row, column]
            scores[:, column] = 0
            scores[row, column] = saved
        weighted[:, column] = 0
        stale |= weighted_rows & above[:, column]
    return matched


def _greedy_row(scores: np.ndarray, weights: np.ndarray, threshold: np.float32, frame_weight: bool, row: int,
                matched: np.ndarray) -> None:
    """One step of the released greedy matching on the current scores (in place)."""
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
    """The tracklet memory, stored in preallocated slots (capacity doubling) so that a frame's update
    is a handful of batched gathers and ``index_copy_`` calls, and a dead tracklet only frees its
    slot. ``order`` lists the live slots in insertion order (the released dict order, which the
    match matrix columns and the bi-softmax over them follow).

    The per-slot cache is right-aligned (the newest entry in the last of ``max_cache`` positions,
    zeros before the first), so appending is a shift that drops the oldest, exactly like the
    released list ``append`` + ``pop(0)``. It holds only what the embedding type reads:
    the L2-normalised embeddings (similarity_guided: the released code normalises the cached
    embeddings again every frame; normalising each once gives the same values), or the raw
    embeddings plus the score as an extra channel (temporally_weighted); nothing otherwise.
    """

    def __init__(self, config: TrackerConfig, embed_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 64):
        self.config = config
        self.embed_dim = embed_dim
        self.order = np.zeros(0, dtype=np.int64)                    # (M,) live slots, insertion order
        self.slot_ids = np.full(capacity, -1, dtype=np.int64)        # id held by each slot
        self.exist_frames = np.zeros(capacity, dtype=np.int64)       # frames seen, per slot
        self.last_frame = np.zeros(capacity, dtype=np.int64)
        self.cache_len = np.zeros(capacity, dtype=np.int64)          # valid cache positions
        self.slot_of_id = np.full(0, -1, dtype=np.int64)             # track id -> slot or -1
        self.free_slots: list[int] = []
        self.used_slots = 0                                          # slots ever handed out
        channels = {"similarity_guided": embed_dim, "temporally_weighted": embed_dim + 1}.get(config.embed_type, 0)
        self.cache = torch.zeros(capacity, config.max_cache, channels, dtype=dtype, device=device)  # (S, L, c)
        self.fused_embeds = torch.zeros(capacity, embed_dim, dtype=dtype, device=device)            # (S, C)
        if config.embed_type == "temporally_weighted":
            # (L+1, L): right-aligned temporal weights of a cache holding c entries, row c.
            self.temporal_table = torch.zeros(config.max_cache + 1, config.max_cache, dtype=dtype, device=device)
            for length in range(1, config.max_cache + 1):
                self.temporal_table[length, config.max_cache - length:] = _temporal_weights(length, dtype, device)

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """(M,) tracklet ids in insertion order."""
        return self.slot_ids[self.order]

    def live_exist_frames(self) -> np.ndarray:
        return self.exist_frames[self.order]

    def matching_embeds(self) -> Tensor:
        """(M, C) the embedding each tracklet is matched with, in insertion order."""
        if self.config.embed_type != "temporally_weighted":
            return _gather_rows(self.fused_embeds, self.order)
        order = torch.from_numpy(self.order).to(self.fused_embeds.device)
        # weights = cached scores + (1/c, ..., 1) over the c cached frames; zero in empty positions
        # (their score and temporal weight are both 0), so no mask is needed.
        rows = self.cache.index_select(0, order)                                       # (M, L, C+1)
        lengths = torch.from_numpy(self.cache_len[self.order]).to(order.device)
        weights = rows[:, :, self.embed_dim] + self.temporal_table.index_select(0, lengths)
        return (rows[:, :, :self.embed_dim] * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True)

    def _allocate(self, track_ids: np.ndarray) -> np.ndarray:
        """Slots for new tracklets (zeroed), appended to the insertion order."""
        num_new = track_ids.size
        reused = [self.free_slots.pop() for _ in range(min(num_new, len(self.free_slots)))]
        fresh = np.arange(self.used_slots, self.used_slots + num_new - len(reused), dtype=np.int64)
        self.used_slots += fresh.size
        capacity = self.slot_ids.size
        if self.used_slots > capacity:
            grown = max(self.used_slots, 2 * capacity)
            extra = grown - capacity
            self.slot_ids = np.concatenate([self.slot_ids, np.full(extra, -1, dtype=np.int64)])
            for name in ("exist_frames", "last_frame", "cache_len"):
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype=np.int64)]))
            self.cache = torch.cat([self.cache, self.cache.new_zeros(extra, *self.cache.shape[1:])])
            self.fused_embeds = torch.cat([self.fused_embeds, self.fused_embeds.new_zeros(extra, self.embed_dim)])
        slots = np.concatenate([np.array(reused, dtype=np.int64), fresh])
        if reused and self.cache.shape[2]:
            cache_host = _numpy_view(self.cache)
            if cache_host is not None:
                cache_host[reused] = 0
            else:
                self.cache.index_fill_(0, torch.tensor(reused, device=self.cache.device), 0)
        self.slot_ids[slots] = track_ids
        self.exist_frames[slots] = 0
        self.cache_len[slots] = 0
        largest = int(track_ids.max()) + 1
        if self.slot_of_id.size < largest:
            grown_ids = np.full(max(largest, 2 * self.slot_of_id.size), -1, dtype=np.int64)
            grown_ids[: self.slot_of_id.size] = self.slot_of_id
            self.slot_of_id = grown_ids
        self.slot_of_id[track_ids] = slots
        self.order = np.concatenate([self.order, slots])
        return slots

    def update(self, track_ids: np.ndarray, scores: Tensor | None, embeds: Tensor, frame_index: int) -> None:
        """Record one frame's detections. track_ids: (n,) unique, each live or brand new (new ids
        in increasing order); scores: (n,) (read by temporally_weighted only); embeds: (n, C)."""
        if track_ids.size == 0:
            return
        config = self.config
        known = track_ids < self.slot_of_id.size
        slots = np.full(track_ids.size, -1, dtype=np.int64)
        slots[known] = self.slot_of_id[track_ids[known]]
        new = slots < 0
        if new.any():
            slots[new] = self._allocate(track_ids[new])
        fused_host, embeds_host = _exact_math_view(self.fused_embeds), _exact_math_view(embeds)
        if config.embed_type != "temporally_weighted" and fused_host is not None and embeds_host is not None:
            self._update_host(slots, new, embeds, embeds_host, fused_host)
        else:
            self._update_torch(slots, new, scores, embeds)
        self.cache_len[slots] = np.minimum(self.cache_len[slots] + 1, config.max_cache)
        self.exist_frames[slots] += 1
        self.last_frame[slots] = frame_index

    def _update_host(self, slots: np.ndarray, first_time: np.ndarray, embeds: Tensor, embeds_host: np.ndarray,
                     fused_host: np.ndarray) -> None:
        """``_update_torch`` on CPU float32/float64 state: the same values bit for bit, with the
        gathers, scatters and elementwise arithmetic on numpy views of the slots (in place) and only
        the norm, the batched dot products and their sum as torch calls (numpy rounds those
        differently). Saves ~15 torch dispatches per frame."""
        config = self.config
        if config.embed_type == "similarity_guided":
            cache_host = _numpy_view(self.cache)
            cache_rows = cache_host[slots]                                                # (n, L, C)
            # F.normalize: x / max(||x||, 1e-12).
            norms = torch.linalg.vector_norm(embeds, dim=1, keepdim=True).numpy()
            unit = embeds_host / np.maximum(norms, np.asarray(1e-12, dtype=norms.dtype))
            similarity = torch.bmm(torch.from_numpy(cache_rows), torch.from_numpy(unit)[:, :, None])[:, :, 0].sum(1).numpy()
            similarity = similarity / self.cache_len[slots].clip(min=1).astype(similarity.dtype)
            beta = np.where(similarity > 0, similarity, 0).astype(similarity.dtype)[:, None]
            fused = (1 - beta) * fused_host[slots] + beta * embeds_host
            fused_host[slots] = np.where(first_time[:, None], embeds_host, fused)
            cache_rows[:, :-1] = cache_rows[:, 1:]
            cache_rows[:, -1] = unit
            cache_host[slots] = cache_rows
        elif config.embed_type == "momentum":
            fused = (1 - config.momentum) * fused_host[slots] + config.momentum * embeds_host
            fused_host[slots] = np.where(first_time[:, None], embeds_host, fused)
        else:  # last
            fused_host[slots] = embeds_host

    def _update_torch(self, slots: np.ndarray, new: np.ndarray, scores: Tensor | None, embeds: Tensor) -> None:
        config = self.config
        device = embeds.device
        slots_t = torch.from_numpy(slots).to(device)
        first_time = torch.from_numpy(new).to(device)[:, None]

        cache_rows = self.cache.index_select(0, slots_t) if self.cache.shape[2] else None   # (n, L, c)
        if config.embed_type == "similarity_guided":
            # beta = max(0, mean cosine(new, cached previous embeds)); fused = (1-beta)*fused + beta*new.
            # Empty cache positions hold zeros: their cosine is 0 and adds nothing to the sum.
            unit = F.normalize(embeds, dim=-1)
            cos = torch.einsum("nlc,nc->nl", cache_rows, unit)
            count = torch.from_numpy(self.cache_len[slots].clip(min=1)).to(device)
            similarity = cos.sum(1) / count
            beta = torch.where(similarity > 0, similarity, torch.zeros((), dtype=cos.dtype, device=device))[:, None]
            fused = (1 - beta) * self.fused_embeds.index_select(0, slots_t) + beta * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
            entry = unit
        elif config.embed_type == "momentum":
            fused = (1 - config.momentum) * self.fused_embeds.index_select(0, slots_t) + config.momentum * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
        elif config.embed_type == "last":
            self.fused_embeds.index_copy_(0, slots_t, embeds)
        else:  # temporally_weighted
            entry = torch.cat([embeds, scores.to(embeds.dtype)[:, None]], dim=1)

        if cache_rows is not None:
            # Append to the right-aligned caches; the oldest position falls off.
            self.cache.index_copy_(0, slots_t, torch.cat([cache_rows[:, 1:], entry[:, None]], dim=1))

    def drop_dead(self, frame_index: int) -> None:
        alive = frame_index - self.last_frame[self.order] <= self.config.num_dead_frames
        if alive.all():
            return
        dead = self.order[~alive]
        self.slot_of_id[self.slot_ids[dead]] = -1
        self.slot_ids[dead] = -1
        self.free_slots.extend(dead.tolist())
        self.order = self.order[alive]


class VideoTracker:
    """Streaming online tracker for one video.

    >>> tracker = VideoTracker(TrackerConfig(num_classes=40))
    >>> for frame in frames:                      # frame outputs of the network, one frame at a time
    ...     result = tracker.step(frame["pred_logits"], frame["pred_masks"], frame["pred_embeds"])
    >>> tracks = tracker.finalize()

    ``device``: where the tracker state lives (default: the device of the first frame);
    ``mask_storage_device``: where per-frame masks are kept until the end of the video (default
    the same; "cpu" bounds accelerator memory on long videos, like the released TO_CPU_FRAMES).

    Per frame the cost does not depend on the video length: the masks of the tracked queries are
    kept as one small tensor per frame (never re-stacked), the memory bank lives in preallocated
    slots, and the video bookkeeping is a few integer arrays.
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
        # Host thresholds, rounded to the score dtype like torch's tensor-vs-scalar comparison.
        self._select_thr = self._init_thr = None
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
        if self._memory is not None and pred_embeds.shape[1] != self._memory.embed_dim:
            raise ValueError(f"{where}: embedding size {pred_embeds.shape[1]} differs from the first frame's "
                             f"{self._memory.embed_dim}")

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
        #    sorted order), or the top one when none passes. The decisions run on host copies.
        probs = pred_logits.softmax(dim=-1)
        probs_host = _numpy_view(probs)
        sorted_scores = None
        if probs_host is not None:
            # max is exact in numpy; a stable sort gives torch's order whenever the scores are all
            # distinct (the only case where every sort agrees). Ties and NaN go to torch.sort,
            # whose CPU order among equal keys is not the stable one.
            max_host = probs_host[:, :-1].max(axis=1)
            order_host = np.argsort(-max_host, kind="stable")
            scores_sorted_host = max_host[order_host]
            if not bool(np.all(scores_sorted_host[:-1] > scores_sorted_host[1:])):
                sorted_scores, order = torch.sort(torch.from_numpy(max_host), dim=0, descending=True)
                order_host = order.numpy()
                scores_sorted_host = sorted_scores.numpy()
        else:
            sorted_scores, order = torch.sort(probs[:, :-1].max(dim=1).values, dim=0, descending=True)
            order_host = _host(order)
            scores_sorted_host = _host(sorted_scores if sorted_scores.dtype == torch.float64 else sorted_scores.float())
        if self._select_thr is None:
            self._select_thr = _host_threshold(config.inference_select_thr, probs.dtype)
            self._init_thr = _host_threshold(config.init_score_thr, probs.dtype)
        # float16 (numpy) / bfloat16 (torch only) scores are compared in float32, exactly.
        scores_host = (scores_sorted_host if scores_sorted_host.dtype in (np.float32, np.float64)
                       else scores_sorted_host.astype(np.float32))
        num_selected = max(1, int(np.count_nonzero(scores_host > self._select_thr)))

        # 2. greedy mask NMS over the selected candidates (their masks only).
        candidate_masks = _gather_rows(pred_masks, order_host[:num_selected])
        kept_pos = np.flatnonzero(mask_nms_keep(binarize_mask_logits(candidate_masks), config.mask_nms_thr))
        kept_queries = order_host[kept_pos]
        kept_scores_host = scores_host[kept_pos]

        # 3. associate with the memory bank.
        track_ids = np.full(kept_pos.size, -1, dtype=np.int64)
        if self._next_id > 0 and len(self._memory) > 0:
            matched = self._match(_gather_rows(pred_embeds, kept_queries))
            has_match = matched >= 0
            track_ids[has_match] = self._memory.ids[matched[has_match]]
        # A never-started tracker only initialises; afterwards unmatched confident detections start
        # new tracklets. (The released code crashes when every tracklet has died; here the empty
        # bank simply matches nothing.)
        new = (track_ids == -1) & (kept_scores_host > self._init_thr)
        track_ids[new] = np.arange(self._next_id, self._next_id + int(new.sum()))
        self._next_id += int(new.sum())

        has_id = track_ids >= 0
        ids = track_ids[has_id]
        tracked_queries = kept_queries[has_id]
        bank_scores = None
        if config.embed_type == "temporally_weighted":
            if sorted_scores is None:
                bank_scores = torch.from_numpy(scores_sorted_host[kept_pos[has_id]])
            else:
                bank_scores = sorted_scores.index_select(0, torch.from_numpy(kept_pos[has_id]).to(self.device))
        self._memory.update(ids, bank_scores, _gather_rows(pred_embeds, tracked_queries), frame_index)
        self._memory.drop_dead(frame_index)

        # 4. video bookkeeping: only the tracked queries' logits and masks are kept.
        self._frame_ids.append(ids)
        self._frame_logits.append(_gather_rows(pred_logits, tracked_queries))
        # From the candidates' copy (just read, still in cache) rather than the frame's full output.
        self._frame_masks.append(_gather_rows(candidate_masks, kept_pos[has_id]).to(self.mask_storage_device))
        self._record_entries(ids, frame_index)
        self._num_frames += 1

        assigned = np.full(num_queries, BELOW_SELECT_THR, dtype=np.int64)
        assigned[order_host[:num_selected]] = REMOVED_BY_NMS
        assigned[kept_queries] = track_ids
        return FrameTrackResult(
            frame_index=frame_index,
            assigned_ids=torch.from_numpy(assigned),
            query_indices=torch.from_numpy(tracked_queries.copy()),
            track_ids=torch.from_numpy(ids.copy()),
            live_ids=self.live_ids(),
        )

    def _match(self, embeds: Tensor) -> np.ndarray:
        """Column of the memory bank matched by each detection (score order), or -1."""
        config = self.config
        memory_embeds = self._memory.matching_embeds()
        if config.match_metric == "bisoftmax":
            similarity = torch.mm(embeds, memory_embeds.t())
            by_row, by_column = similarity.softmax(dim=1), similarity.softmax(dim=0)
            by_row_host, by_column_host = _exact_math_view(by_row), _exact_math_view(by_column)
            if by_row_host is not None:
                return self._assign((by_row_host + by_column_host) / 2)
            match_scores = (by_row + by_column) / 2
        else:
            match_scores = torch.mm(F.normalize(embeds, p=2, dim=1), F.normalize(memory_embeds, p=2, dim=1).t())
        return self._assign(_host(match_scores.float()))

    def _assign(self, match_scores: np.ndarray) -> np.ndarray:
        config = self.config
        if config.match_type == "greedy":
            return greedy_match(match_scores, self._memory.live_exist_frames(), config.match_score_thr,
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

        # Record r of frame t sits at row (r - first record of t) of that frame's mask tensor.
        frame_offsets = np.cumsum([0] + [ids.size for ids in self._frame_ids])
        mask_rows = np.full((num_tracks, num_frames), -1, dtype=np.int64)
        mask_rows[rows, frames] = used - frame_offsets[frames]

        all_logits = torch.cat(self._frame_logits)
        logits = all_logits.index_select(0, torch.from_numpy(used).to(all_logits.device))
        counts = np.bincount(rows, minlength=num_tracks)
        if num_tracks == 0:
            pred_logits = all_logits.new_zeros(0, all_logits.shape[1])
        elif self.config.temporal_score_type == "mean":
            # One reduction per track over its own frames: this is the released torch.stack(..).mean(0)
            # bit for bit (a padded or scattered sum reduces in a different order).
            pred_logits = torch.stack([segment.mean(0) for segment in torch.split(logits, counts.tolist())])
        else:
            padded = all_logits.new_full((num_tracks, num_frames, all_logits.shape[1]), float("-inf"))
            padded[torch.from_numpy(rows).to(logits.device), torch.from_numpy(frames).to(logits.device)] = logits
            pred_logits = padded.max(dim=1).values
        # The per-frame mask tensors are never modified after their frame: sharing them is safe.
        return VideoTracks(torch.from_numpy(track_ids.copy()), pred_logits,
                           frame_masks=tuple(self._frame_masks), mask_rows=torch.from_numpy(mask_rows))

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
