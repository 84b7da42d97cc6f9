"""Online tracker of CTVIS: per-frame detections -> video-level tracks, at parity with the released
``SimpleTracker`` + ``MemoryBank`` (IDOL-style association with a memory bank of re-id embeddings).

The tracker is a streaming state object, :class:`VideoTracker`: ``step()`` consumes ONE frame,
``step_clip()`` a clip of frames (bit for bit the same as one ``step()`` per frame), and
``current_tracks()`` / ``finalize()`` return the video-level outputs for the frames seen so far.
:func:`track_video` runs it over a whole video. Shapes use fixed letters: T frames, Q queries,
K classes (K+1 logits, no-object last), C embedding channels, h, w mask size, M memory-bank
tracklets, N output tracks.

Where the work goes (and why it is fast):

* the detection stage (score sort, select threshold, mask NMS) does not depend on the tracks, so
  it runs for a clip of frames at once: only the selected detections' masks are read (one gather
  per frame, into reused buffers: on this kind of machine writing into fresh pages costs more than
  the copy), binarised and counted per band of rows; the pairwise mask IoU is exact from the areas
  for pairs sharing no band, bounded for the rest, and an integer intersection is computed only for
  the few pairs the bound cannot settle. On CPU these full-mask passes run on numpy views (see
  ``_numpy_view``);
* the bi-softmax / cosine match matrix and the memory-bank update of all matched tracklets are
  a few batched ops on the state's device; the bank lives in preallocated slots. On CPU (float32 /
  float64) the exact numpy work (sorting distinct scores, gathers, scatters, elementwise
  arithmetic) runs on numpy views, and the ops whose rounding the released code fixes (softmax,
  the match matrix product, norms) stay torch calls;
* the inherently sequential decisions (greedy NMS, greedy matching in score order) run on small
  host copies; NMS settles position i of every frame of a clip at once; greedy matching takes
  each row's first choice unless a taken column makes it look again;
* nothing grows with the video inside a step and no mask is copied twice: the tracked masks stay
  in the clip's candidate copy (or, in :func:`track_video`, in the caller's whole-video tensor)
  and :class:`VideoTracks` reads them in place (the dense (N, T, h, w) tensor is only built when
  asked for); the video bookkeeping (which track is present in which frame, noise-track deletion)
  is a few integer arrays.

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


# Tests switch this off to run the accelerator code paths (torch calls throughout) on CPU.
_HOST_FAST_PATHS = True


def _numpy_view(tensor: Tensor) -> np.ndarray | None:
    """Zero-copy numpy view of a CPU tensor (dtype numpy knows), else None.

    The tracker's full-mask passes (gather, thresholds, pixel counts) are simple elementwise work on
    a few MB per frame. On CPU, numpy does them single-threaded in 0.04-0.13 ms each where torch
    takes 0.3 ms on one thread and 4-12 ms on two threads of a loaded machine (each op opens an
    OpenMP parallel region whose barrier waits for a descheduled thread; measured). The results
    are the same booleans and integer counts; accelerators keep the torch path.
    """
    if not _HOST_FAST_PATHS or tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
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
        if self.max_cache < 1:
            raise ValueError(f"TrackerConfig.max_cache must be >= 1, got {self.max_cache}")


@dataclass(frozen=True)
class _ClipDetections:
    """The detection stage of a clip of T frames (see ``VideoTracker._detect``). S candidates in
    all, frame by frame: frame t owns positions offsets[t]:offsets[t + 1], in descending score order.

    queries (S,) query index; scores (S,) host best-class score; flat_rows (S,) row in the clip's
    (T * Q) queries; keep (S,) survived mask NMS; masks (S, h, w) a copy of the candidates' mask
    logits (None when the tracker keeps references instead); best_scores (T * Q,) every query's
    best-class score (a tensor on the tracker's device). The D candidates that survived NMS, frame
    by frame (frame t owns kept_offsets[t]:kept_offsets[t + 1]): kept_logits (D, K+1) and
    kept_embeds (D, C), gathered once for the clip.
    """

    offsets: np.ndarray
    queries: np.ndarray
    scores: np.ndarray
    flat_rows: np.ndarray
    keep: np.ndarray
    masks: Tensor | None
    best_scores: Tensor
    kept_offsets: np.ndarray
    kept_logits: Tensor
    kept_embeds: Tensor
    kept_logits_host: np.ndarray | None      # numpy views of the two (CPU), else None
    kept_embeds_host: np.ndarray | None


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
    array = _numpy_view(mask_logits)
    if array is not None:
        planes = array if array.ndim == 3 else array.reshape(1, 1, -1)
        binary = np.empty(planes.shape, dtype=bool)
        _binarize_host(planes, binary, np.empty(planes.shape, dtype=bool))
        return torch.from_numpy(binary.reshape(array.shape))
    ambiguous_logit = _ambiguous_logit(mask_logits.dtype)
    binary = mask_logits > 0
    strict = mask_logits > ambiguous_logit
    if _count_true(binary) != _count_true(strict):
        ambiguous = binary & ~strict
        binary[ambiguous] = mask_logits[ambiguous].sigmoid() > 0.5
    return binary


def _binarize_host(logits: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """:func:`binarize_mask_logits` of a host (n, h, w) array into ``out`` (bool, same shape), using
    ``scratch`` (bool, same shape) as working space: no allocation when nothing is ambiguous.
    Returns the per-band pixel counts of the result (see :func:`_band_pixel_counts`; computed
    while it is in cache)."""
    np.greater(logits, 0, out=out)
    band_counts = _band_pixel_counts(out)
    np.greater(logits, _ambiguous_logit(torch.from_numpy(logits[:0]).dtype), out=scratch)
    # The strict test is a subset of the plain one: equal counts mean equal masks (almost always).
    if int(band_counts.sum(dtype=np.int64)) != np.count_nonzero(scratch):
        ambiguous = out & ~scratch
        out[ambiguous] = (torch.from_numpy(logits[ambiguous]).sigmoid() > 0.5).numpy()
        band_counts = _band_pixel_counts(out)
    return band_counts


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


def band_height(height: int, width: int) -> int:
    """Rows per band of :func:`_band_pixel_counts` for (h, w) masks: 4, 2 or 1 (it divides h, and a
    band is fewer than 2048 pixels so its word sums fit the byte lanes)."""
    for rows in (4, 2):
        if height % rows == 0 and rows * width < 2048:
            return rows
    return 1


def _band_pixel_counts(binary: np.ndarray) -> np.ndarray:
    """(n, h / g) int32 number of True pixels per band of g = ``band_height(h, w)`` mask rows of a
    (n, h, w) bool array.

    When a row is a whole number of 8-byte words (w % 8 == 0, C-contiguous), a band's words are
    summed as uint64: byte lane k of the sum counts the pixels at positions = k mod 8 (at most
    g * w / 8 < 256 each, so no lane carries into the next), and the band count is the sum of the
    8 lanes, added in-register: adjacent byte lanes into four 16-bit lanes (each < 2^9), then those
    four by one multiplication whose top 16 bits hold their sum (< 2^11, no carry out). Bands of 4
    rows instead of single rows cost 2.5x less (measured) and bound mask intersections almost as
    tightly (see clip_mask_nms_keep)."""
    num, height, width = binary.shape
    rows = band_height(height, width)
    if width % 8 or rows * width >= 2048 or not binary.flags.c_contiguous:
        counts = binary.view(np.uint8).sum(axis=2, dtype=np.int32)
        return counts.reshape(num, height // rows, rows).sum(axis=2, dtype=np.int32) if rows > 1 else counts
    lane_sums = binary.view(np.uint64).reshape(num, height // rows, rows * width // 8).sum(axis=2, dtype=np.uint64)
    low_bytes = np.uint64(0x00FF00FF00FF00FF)
    pairs = (lane_sums & low_bytes) + ((lane_sums >> np.uint64(8)) & low_bytes)
    return ((pairs * np.uint64(0x0001000100010001)) >> np.uint64(48)).astype(np.int32)


def mask_nms_keep(binary_masks: Tensor, nms_thr: float) -> np.ndarray:
    """Greedy mask NMS of score-sorted masks; returns a host bool keep vector (n,).

    binary_masks: (n, h, w) bool, sorted by descending score. Mask j is dropped when a kept mask
    i < j has IoU ``(inter + 1e-6) / (union + 1e-6) > nms_thr`` (the released float32 formula, so
    two empty masks have IoU 1). One frame of :func:`clip_mask_nms_keep`.
    """
    return clip_mask_nms_keep(binary_masks, np.array([0, binary_masks.shape[0]]), nms_thr)


# Pairs whose exact intersection is counted by one gathered AND per batch (bounds the temporaries).
_INTERSECTION_PAIRS_PER_BATCH = 256


def clip_mask_nms_keep(binary_masks: Tensor, offsets: np.ndarray, nms_thr: float,
                       band_counts: np.ndarray | None = None) -> np.ndarray:
    """Greedy mask NMS of several frames at once; returns a host bool keep vector (S,).

    binary_masks: (S, h, w) bool, the candidates of every frame; frame f owns rows
    ``offsets[f]:offsets[f + 1]``, sorted by descending score. Within a frame, mask j is dropped
    when a kept mask i < j has IoU ``(inter + 1e-6) / (union + 1e-6) > nms_thr`` (the released
    float32 formula, so two empty masks have IoU 1); frames never interact. Built without a
    per-pair or per-frame loop and with one pass over the masks (pixel counts per band of up to 4
    rows) plus one over the few pairs that need an exact intersection:

    * pairs that share no band (every pair with an empty mask among them) have intersection 0:
      their IoU is exact from the areas alone;
    * an upper bound of every other pair's IoU (inter <= sum over bands of the smaller band count)
      rules out most of the rest (on the benchmark video, 4-row bands leave 2.0 exact
      intersections per frame where single rows leave 1.9);
    * the remaining pairs get their exact integer intersection, by gathered AND-counts, or by one
      matmul of a frame's flattened masks when that frame has more such pairs than masks.

    The suppression itself is a sequential pass over the candidate positions, every frame at once.
    ``band_counts``: the (S, bands) counts of :func:`_band_pixel_counts` when the caller has them.
    """
    total = binary_masks.shape[0]
    offsets = np.asarray(offsets, dtype=np.int64)
    keep = np.ones(total, dtype=bool)
    counts = np.diff(offsets)
    if total <= 1 or counts.max() <= 1:
        return keep
    # Per-band pixel counts are the only full pass: int32 sums of the bytes (a bool sum, or a uint8
    # sum to int64, first converts the whole tensor; measured several times slower).
    array = _numpy_view(binary_masks)
    if band_counts is not None:
        pass
    elif array is not None:
        band_counts = _band_pixel_counts(array)                                      # (S, bands)
    else:
        num, height, width = binary_masks.shape
        rows = band_height(height, width)
        band_counts = _host(binary_masks.view(torch.uint8).reshape(num, height // rows, rows * width)
                            .sum(dim=2, dtype=torch.int32))
    area = band_counts.sum(axis=1, dtype=np.int64)                               # (S,) exact
    threshold = np.float32(nms_thr)

    # Every pair (i < j) of candidates of one frame, frame by frame (i-major within a frame).
    upper_i, upper_j = np.triu_indices(int(counts.max()), 1)
    pair_frame, pair = np.nonzero(upper_j[None, :] < counts[:, None])
    first, second = offsets[pair_frame] + upper_i[pair], offsets[pair_frame] + upper_j[pair]
    # inter <= min(a_i, a_j) and union >= max(a_i, a_j) bound every IoU by the area ratio; only the
    # pairs that bound leaves open get the band bound below (usually a small fraction of them). The
    # float32 IoU is within a few ulps of the exact one: a 1e-6 slack keeps every bound safe.
    area_first, area_second = area[first], area[second]
    open_pairs = ((np.minimum(area_first, area_second) + 1e-6) / (np.maximum(area_first, area_second) + 1e-6)
                  > nms_thr - 1e-6)
    first, second, pair_frame = first[open_pairs], second[open_pairs], pair_frame[open_pairs]
    # Masks i and j can only intersect in bands where both have pixels, and at most
    # min(count_i, count_j) pixels per such band: an upper bound of the intersection that is 0
    # exactly when the masks share no band (every pair with an empty mask among them).
    inter_bound = np.minimum(band_counts[first], band_counts[second]).sum(axis=1, dtype=np.int64)  # (p,)
    area_sum = area[first] + area[second]
    overlapping = np.zeros(first.size, dtype=bool)
    # Disjoint bands: intersection 0, the IoU is exact from the areas.
    disjoint = inter_bound == 0
    overlapping[disjoint] = _float32_iou(np.zeros(1, np.int64), area_sum[disjoint]) > threshold
    # IoU <= bound / (a_i + a_j - bound).
    iou_bound = (inter_bound + 1e-6) / (area_sum - inter_bound + 1e-6)
    undecided = np.flatnonzero(~disjoint & (iou_bound > nms_thr - 1e-6))
    if undecided.size:
        intersection = _pair_intersections(binary_masks, array, first[undecided], second[undecided],
                                           pair_frame[undecided], offsets)
        union = area_sum[undecided] - intersection
        overlapping[undecided] = _float32_iou(intersection, union) > threshold
    first, second = first[overlapping], second[overlapping]
    if first.size == 0:
        return keep
    # Greedy suppression in score order: candidate i (if still kept) drops every j it overlaps. The
    # frames are independent, so position i of every frame is settled in one step.
    position = first - offsets[pair_frame[overlapping]]
    by_position = np.argsort(position, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(position[by_position]) != 0])
    for group in np.split(by_position, starts[1:]):
        suppressors = keep[first[group]]
        keep[second[group[suppressors]]] = False
    return keep


def _pair_intersections(binary_masks: Tensor, array: np.ndarray | None, first: np.ndarray, second: np.ndarray,
                        pair_frame: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(p,) int64 exact pixel counts of ``mask[first] & mask[second]`` (masks of one frame per pair)."""
    total = binary_masks.shape[0]
    flat = binary_masks.reshape(total, -1)
    intersection = np.zeros(first.size, dtype=np.int64)
    pairs_per_frame = np.bincount(pair_frame, minlength=offsets.size - 1)
    # A frame with more such pairs than masks: one matmul of its flattened masks is cheaper.
    dense_frames = np.flatnonzero(pairs_per_frame > np.diff(offsets))
    by_gather = ~np.isin(pair_frame, dense_frames)
    for frame in dense_frames.tolist():
        start, stop = int(offsets[frame]), int(offsets[frame + 1])
        in_frame = np.flatnonzero(pair_frame == frame)
        # 0/1 products summed in float32 are exact integers (up to 2^24 pixels per mask).
        flat_float = flat[start:stop].to(torch.float32)
        products = _host((flat_float @ flat_float.T).round_().to(torch.long))
        intersection[in_frame] = products[first[in_frame] - start, second[in_frame] - start]
    gathered = np.flatnonzero(by_gather)
    for begin in range(0, gathered.size, _INTERSECTION_PAIRS_PER_BATCH):
        batch = gathered[begin:begin + _INTERSECTION_PAIRS_PER_BATCH]
        if array is not None:
            flat_array = array.reshape(total, -1)
            intersection[batch] = (np.take(flat_array, first[batch], axis=0)
                                   & np.take(flat_array, second[batch], axis=0)).view(np.uint8).sum(
                                       axis=1, dtype=np.int64)
        else:
            index = torch.from_numpy(np.stack([first[batch], second[batch]])).to(binary_masks.device)
            intersection[batch] = _host(torch.count_nonzero(flat[index[0]] & flat[index[1]], dim=1))
    return intersection


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
    # Read-only in the fast pass; the row-by-row fallbacks zero columns in a copy.
    scores = np.asarray(match_scores, dtype=np.float32)
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
    exact_sums = int(exist_frames.sum()) < 2 ** 24
    if threshold < 0 or not exact_sums:
        scores = scores.copy()
        for row in rows:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
        return matched
    candidates = scores[rows]                                                   # (k, M)
    above = candidates > threshold
    if frame_weight:
        num_above = above.sum(axis=1)
        weighted_rows = num_above > 1
        # Sums of integer frame counts below 2^24: exact in float32 whatever the order (a matmul).
        mean_weight = (above.astype(np.float32) @ weights) / np.maximum(num_above, 1).astype(np.float32)
        row_weights = np.where(above, weights, mean_weight[:, None])
        weighted = np.where(weighted_rows[:, None], candidates * row_weights, candidates)
    else:
        weighted_rows = np.zeros(rows.size, dtype=bool)
        weighted = candidates
    if np.isnan(weighted).any():
        # NaN scores: keep numpy's argmax semantics (the first NaN wins) by the row-by-row pass.
        scores = scores.copy()
        for row in rows:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
        return matched
    # The sequential pass runs in Python over the k candidate rows (a few dozen: per-row numpy calls
    # would cost more than the work). A row whose first choice (its argmax before any column was
    # taken) is still free and whose weights are not stale takes it: zeroing other columns cannot
    # change a maximum (threshold >= 0). Only the other rows look again. float32 values convert to
    # Python floats exactly, so the comparisons are numpy's. Sets of columns are int bitmasks.
    first_choice = np.argmax(weighted, axis=1).tolist()
    first_best = weighted.max(axis=1).tolist()
    threshold_value = float(threshold)
    # Per weighted row, the columns above the threshold: the row goes stale once one is taken.
    stale_if_taken = [0] * rows.size
    if frame_weight and weighted_rows.any():
        packed = np.packbits(weighted_rows[:, None] & above, axis=1, bitorder="little")
        if packed.shape[1] <= 8:
            words = np.zeros((packed.shape[0], 8), dtype=np.uint8)
            words[:, :packed.shape[1]] = packed
            stale_if_taken = words.view("<u8")[:, 0].tolist()
        else:
            stale_if_taken = [int.from_bytes(row_bytes, "little") for row_bytes in map(bytes, packed)]
    taken = 0
    taken_columns: list[int] = []
    for position, row in enumerate(rows.tolist()):
        column = first_choice[position]
        if stale_if_taken[position] & taken:
            # Recompute this row alone on the current scores (taken columns score 0).
            row_scores = scores[row].copy()
            row_scores[taken_columns] = 0
            column = _greedy_row_column(row_scores, weights, threshold, frame_weight)
            if column < 0:
                continue
        elif not taken >> column & 1:
            if not first_best[position] > threshold_value:
                continue
        else:
            values = weighted[position].tolist()
            for taken_column in taken_columns:
                values[taken_column] = 0.0
            best = max(values)
            if not best > threshold_value:
                continue
            column = values.index(best)        # the first maximum, as np.argmax
        matched[row] = column
        taken |= 1 << column
        taken_columns.append(column)
    return matched


def _greedy_row_column(row_scores: np.ndarray, weights: np.ndarray, threshold: np.float32,
                       frame_weight: bool) -> int:
    """The column one step of the released greedy matching picks for a row, or -1."""
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
    return column if best > threshold else -1


def _greedy_row(scores: np.ndarray, weights: np.ndarray, threshold: np.float32, frame_weight: bool, row: int,
                matched: np.ndarray) -> None:
    """One step of the released greedy matching on the current scores (in place)."""
    column = _greedy_row_column(scores[row], weights, threshold, frame_weight)
    if column >= 0:
        matched[row] = column
        saved = scores[row, column]
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

    The per-slot cache holds the last ``max_cache`` entries, like the released list ``append`` +
    ``pop(0)``, and only what the embedding type reads: the L2-normalised embeddings
    (similarity_guided: the released code normalises the cached embeddings again every frame;
    normalising each once gives the same values), or the raw embeddings plus the score as an extra
    channel (temporally_weighted); nothing otherwise. similarity_guided only sums over its entries,
    so they form a ring (the new entry overwrites the oldest in place, see ``cache_position``); the
    temporal weights depend on recency, so temporally_weighted keeps its entries right-aligned (the
    newest last, zeros before the first) and appending is a shift. Empty positions hold zeros.
    """

    def __init__(self, config: TrackerConfig, embed_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 64):
        self.config = config
        self.embed_dim = embed_dim
        self.order = np.zeros(0, dtype=np.int64)                    # (M,) live slots, insertion order
        self.slot_ids = np.full(capacity, -1, dtype=np.int64)        # id held by each slot
        self.exist_frames = np.zeros(capacity, dtype=np.int64)       # frames seen, per slot
        self.last_frame = np.zeros(capacity, dtype=np.int64)
        self.slot_of_id = np.full(0, -1, dtype=np.int64)             # track id -> slot or -1
        self.free_slots: list[int] = []
        self.used_slots = 0                                          # slots ever handed out
        channels = {"similarity_guided": embed_dim, "temporally_weighted": embed_dim + 1}.get(config.embed_type, 0)
        self.cache = torch.zeros(capacity, config.max_cache, channels, dtype=dtype, device=device)  # (S, L, c)
        self.fused_embeds = torch.zeros(capacity, embed_dim, dtype=dtype, device=device)            # (S, C)
        self._refresh_host_views()
        if config.embed_type == "temporally_weighted":
            # (L+1, L): right-aligned temporal weights of a cache holding c entries, row c.
            self.temporal_table = torch.zeros(config.max_cache + 1, config.max_cache, dtype=dtype, device=device)
            for length in range(1, config.max_cache + 1):
                self.temporal_table[length, config.max_cache - length:] = _temporal_weights(length, dtype, device)

    def __len__(self) -> int:
        return int(self.order.shape[0])

    # Every update of a slot writes one cache entry, so the cache state follows from exist_frames.
    def cache_length(self, slots: np.ndarray) -> np.ndarray:
        """(n,) valid cache entries of the slots (before this frame's update)."""
        return np.minimum(self.exist_frames[slots], self.config.max_cache)

    def cache_position(self, slots: np.ndarray) -> np.ndarray:
        """(n,) ring position the next similarity_guided entry goes to (the oldest, or an empty one)."""
        return self.exist_frames[slots] % self.config.max_cache

    def _refresh_host_views(self) -> None:
        """Numpy views of the slot tensors (CPU float32/float64, else None), made once per growth
        rather than per frame."""
        self.fused_host = _exact_math_view(self.fused_embeds)
        self.cache_host = _numpy_view(self.cache)

    @property
    def ids(self) -> np.ndarray:
        """(M,) tracklet ids in insertion order."""
        return self.slot_ids[self.order]

    def live_exist_frames(self) -> np.ndarray:
        return self.exist_frames[self.order]

    def matching_embeds(self) -> Tensor:
        """(M, C) the embedding each tracklet is matched with, in insertion order."""
        if self.config.embed_type != "temporally_weighted":
            if self.fused_host is not None:
                return torch.from_numpy(np.take(self.fused_host, self.order, axis=0))
            return _gather_rows(self.fused_embeds, self.order)
        order = torch.from_numpy(self.order).to(self.fused_embeds.device)
        # weights = cached scores + (1/c, ..., 1) over the c cached frames; zero in empty positions
        # (their score and temporal weight are both 0), so no mask is needed.
        rows = self.cache.index_select(0, order)                                       # (M, L, C+1)
        lengths = torch.from_numpy(self.cache_length(self.order)).to(order.device)
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
            for name in ("exist_frames", "last_frame"):
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype=np.int64)]))
            self.cache = torch.cat([self.cache, self.cache.new_zeros(extra, *self.cache.shape[1:])])
            self.fused_embeds = torch.cat([self.fused_embeds, self.fused_embeds.new_zeros(extra, self.embed_dim)])
            self._refresh_host_views()
        slots = np.concatenate([np.array(reused, dtype=np.int64), fresh])
        if reused and self.cache.shape[2]:
            cache_host = _numpy_view(self.cache)
            if cache_host is not None:
                cache_host[reused] = 0
            else:
                self.cache.index_fill_(0, torch.tensor(reused, device=self.cache.device), 0)
        self.slot_ids[slots] = track_ids
        self.exist_frames[slots] = 0
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
        fused_host, embeds_host = self.fused_host, _exact_math_view(embeds)
        if config.embed_type != "temporally_weighted" and fused_host is not None and embeds_host is not None:
            self._update_host(slots, new, embeds, embeds_host, fused_host)
        else:
            self._update_torch(slots, new, scores, embeds)
        self.exist_frames[slots] += 1
        self.last_frame[slots] = frame_index

    def _update_host(self, slots: np.ndarray, first_time: np.ndarray, embeds: Tensor, embeds_host: np.ndarray,
                     fused_host: np.ndarray) -> None:
        """``_update_torch`` on CPU float32/float64 state, with the gathers, scatters, dot products
        and elementwise arithmetic on numpy views of the slots (in place); the norm stays a torch
        call (F.normalize's values). Saves ~15 torch dispatches per frame.

        The batched dot products are numpy's (a torch bmm costs 40-70 us here for 64K
        multiply-adds). Any batched product may differ from the released per-tracklet einsum in
        the last bit of the mean cosine (so does torch.bmm: measured up to 9e-8); it only scales
        the fusion weight."""
        config = self.config
        if config.embed_type == "similarity_guided":
            cache_host = self.cache_host
            # F.normalize: x / max(||x||, 1e-12).
            norms = torch.linalg.vector_norm(embeds, dim=1, keepdim=True).numpy()
            unit = embeds_host / np.maximum(norms, np.asarray(1e-12, dtype=norms.dtype))
            # Mean cosine with the cached (earlier) entries; empty positions hold zeros.
            similarity = np.matmul(cache_host[slots], unit[:, :, None])[:, :, 0].sum(axis=1)     # (n,)
            similarity = similarity / self.cache_length(slots).clip(min=1).astype(similarity.dtype)
            beta = np.where(similarity > 0, similarity, 0).astype(similarity.dtype)[:, None]
            fused = (1 - beta) * fused_host[slots] + beta * embeds_host
            fused_host[slots] = np.where(first_time[:, None], embeds_host, fused)
            cache_host[slots, self.cache_position(slots)] = unit
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
            count = torch.from_numpy(self.cache_length(slots).clip(min=1)).to(device)
            similarity = cos.sum(1) / count
            beta = torch.where(similarity > 0, similarity, torch.zeros((), dtype=cos.dtype, device=device))[:, None]
            fused = (1 - beta) * self.fused_embeds.index_select(0, slots_t) + beta * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
            # Ring cache: the new entry overwrites the oldest.
            self.cache[slots_t, torch.from_numpy(self.cache_position(slots)).to(device)] = unit
            return
        elif config.embed_type == "momentum":
            fused = (1 - config.momentum) * self.fused_embeds.index_select(0, slots_t) + config.momentum * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
        elif config.embed_type == "last":
            self.fused_embeds.index_copy_(0, slots_t, embeds)
        else:  # temporally_weighted
            entry = torch.cat([embeds, scores.to(embeds.dtype)[:, None]], dim=1)

        if cache_rows is not None:
            # Append to the right-aligned caches (temporally_weighted); the oldest position falls off.
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

    >>> tracker = VideoTracker(TrackerConfig())
    >>> for frame in frames:                      # frame outputs of the network, one frame at a time
    ...     result = tracker.step(frame["pred_logits"], frame["pred_masks"], frame["pred_embeds"])
    >>> tracks = tracker.finalize()

    ``device``: where the tracker state lives (default: the device of the first frame);
    ``mask_storage_device``: where per-frame masks are kept until the end of the video (default
    the same; "cpu" bounds accelerator memory on long videos, like the released TO_CPU_FRAMES).
    ``copy_masks``: True (default) keeps a copy of the candidates' masks (about the tracked ones),
    so the caller may reuse or free its frame tensors; False keeps references to the frames' own
    (Q, h, w) mask tensors instead, as the released code does (no copy; for callers that hold the
    whole video anyway, like :func:`track_video`).

    :meth:`step_clip` takes several frames at once (the same results as one :meth:`step` per
    frame, with less overhead). Per frame the cost does not depend on the video length: the masks
    are kept per frame (never re-stacked), the memory bank lives in preallocated slots, and the
    video bookkeeping is a few integer arrays.
    """

    # Frames per detection batch in step_clip (bounds its buffers: ~12 MB for 16 frames of 30
    # candidates at 120x216, which stay in a server CPU's last-level cache).
    detection_frames = 16

    def __init__(self, config: TrackerConfig, device: torch.device | str | None = None,
                 mask_storage_device: torch.device | str | None = None, copy_masks: bool = True):
        self.config = config
        self.copy_masks = copy_masks
        # Reused host buffers of the detection stage (see _candidate_masks).
        self._host_buffers: dict[str, np.ndarray] = {}
        self.device = torch.device(device) if device is not None else None
        self.mask_storage_device = torch.device(mask_storage_device) if mask_storage_device is not None else None
        self._memory: _MemoryBank | None = None
        self._next_id = 0
        self._num_frames = 0
        self._finalized = False
        self._mask_shape: tuple[int, int] | None = None
        self._num_logits: int | None = None  # K+1, from the first frame
        # Host thresholds, rounded to the score dtype like torch's tensor-vs-scalar comparison.
        self._select_thr = self._init_thr = None
        # Tracks recorded per frame (ids in score order) with their logits and masks.
        self._frame_ids: list[np.ndarray] = []
        self._frame_logits: list[Tensor] = []
        # Per frame, a tensor holding the tracked masks and the row of each tracked id in it.
        self._frame_masks: list[Tensor] = []
        self._frame_mask_rows: list[np.ndarray] = []
        # Rows of the released video_dict ("entries"), in creation order. A track deleted as noise
        # that shows up again starts a fresh entry at that frame.
        # Capacity-doubling arrays; the first _num_entries rows are used (see _record_entries).
        self._num_entries = 0
        self._entry_track = np.zeros(0, dtype=np.int64)
        self._entry_start = np.zeros(0, dtype=np.int64)
        self._entry_count = np.zeros(0, dtype=np.int64)
        self._entry_last = np.zeros(0, dtype=np.int64)
        self._entry_alive = np.zeros(0, dtype=bool)
        self._entry_of_track = np.full(0, -1, dtype=np.int64)  # track id -> live entry or -1
        self._young_entries = np.zeros(0, dtype=np.int64)      # alive, seen < suppress_frame_num times

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def live_ids(self) -> Tensor:
        """(M,) ids of the tracklets currently in the memory bank, in insertion order."""
        # ``ids`` is a fresh array (a gather): the tensor shares nothing with the bank.
        ids = self._memory.ids if self._memory is not None else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(ids)

    def _check_clip(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> None:
        num_frames = pred_logits.shape[0] if pred_logits.dim() == 3 else 1
        first = self._num_frames
        where = f"frame {first}" if num_frames == 1 else f"frames {first}-{first + num_frames - 1}"
        # K, the number of classes, comes from the first frame's logits (K+1 with no-object).
        expected = "K+1" if self._num_logits is None else f"K+1={self._num_logits}"
        if pred_logits.dim() != 3 or pred_logits.shape[2] < 2 or \
                (self._num_logits is not None and pred_logits.shape[2] != self._num_logits):
            raise ValueError(f"{where}: pred_logits must be (Q, {expected}) per frame, "
                             f"got {tuple(pred_logits.shape[1:])}")
        num_queries = pred_logits.shape[1]
        if num_frames == 0:
            raise ValueError(f"frame {first}: an empty clip (no frames)")
        if num_queries == 0:
            raise ValueError(f"{where}: no queries")
        if pred_masks.dim() != 4 or pred_masks.shape[:2] != (num_frames, num_queries):
            raise ValueError(f"{where}: pred_masks must be (Q={num_queries}, h, w) per frame, "
                             f"got {tuple(pred_masks.shape[1:])}")
        if pred_embeds.dim() != 3 or pred_embeds.shape[:2] != (num_frames, num_queries):
            raise ValueError(f"{where}: pred_embeds must be (Q={num_queries}, C) per frame, "
                             f"got {tuple(pred_embeds.shape[1:])}")
        if self._mask_shape is not None and tuple(pred_masks.shape[2:]) != self._mask_shape:
            raise ValueError(f"{where}: mask size {tuple(pred_masks.shape[2:])} differs from the "
                             f"first frame's {self._mask_shape}")
        if self._memory is not None and pred_embeds.shape[2] != self._memory.embed_dim:
            raise ValueError(f"{where}: embedding size {pred_embeds.shape[2]} differs from the first frame's "
                             f"{self._memory.embed_dim}")
        self._num_logits = pred_logits.shape[2]

    @torch.no_grad()
    def step(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> FrameTrackResult:
        """Track one frame. pred_logits (Q, K+1), pred_masks (Q, h, w) logits, pred_embeds (Q, C)."""
        if pred_logits.dim() != 2 or pred_masks.dim() != 3 or pred_embeds.dim() != 2:
            raise ValueError(f"frame {self._num_frames}: step() takes pred_logits (Q, K+1), pred_masks (Q, h, w) "
                             f"and pred_embeds (Q, C); got {tuple(pred_logits.shape)}, {tuple(pred_masks.shape)}, "
                             f"{tuple(pred_embeds.shape)} (step_clip() takes several frames)")
        return self.step_clip(pred_logits[None], pred_masks[None], pred_embeds[None])[0]

    @torch.no_grad()
    def step_clip(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> list[FrameTrackResult]:
        """Track the next T frames: pred_logits (T, Q, K+1), pred_masks (T, Q, h, w) logits,
        pred_embeds (T, Q, C). The same as T calls of :meth:`step`, bit for bit: the detection
        stage (score sort, select threshold, mask NMS) does not depend on the tracks, so it runs
        for the T frames at once; the association then goes frame by frame."""
        if self._finalized:
            raise RuntimeError("VideoTracker.step() after finalize(); start a new VideoTracker per video")
        self._check_clip(pred_logits, pred_masks, pred_embeds)
        if self.device is None:
            self.device = pred_logits.device
        if self.mask_storage_device is None:
            self.mask_storage_device = self.device
        if not self.copy_masks and self.mask_storage_device != self.device:
            raise ValueError("VideoTracker: copy_masks=False keeps the frames' own mask tensors; it cannot "
                             f"also keep them on mask_storage_device={self.mask_storage_device}")
        pred_logits = pred_logits.to(self.device)
        pred_masks = pred_masks.to(self.device)
        pred_embeds = pred_embeds.to(self.device)
        if self._memory is None:
            self._memory = _MemoryBank(self.config, pred_embeds.shape[2], pred_embeds.dtype, self.device)
            self._mask_shape = tuple(pred_masks.shape[2:])
        # Softmax is computed row by row: the (T, Q, K+1) call gives each frame's values bit for bit.
        probs = pred_logits.softmax(dim=-1)
        if self._select_thr is None:
            self._select_thr = _host_threshold(self.config.inference_select_thr, probs.dtype)
            self._init_thr = _host_threshold(self.config.init_score_thr, probs.dtype)
        num_frames = pred_logits.shape[0]
        results: list[FrameTrackResult] = []
        # The detection stage runs over up to detection_frames frames at a time (bounds its buffers).
        for start in range(0, num_frames, self.detection_frames):
            batch = slice(start, min(start + self.detection_frames, num_frames))
            detections = self._detect(probs[batch], pred_masks[batch], pred_logits[batch], pred_embeds[batch])
            first_stored = len(self._frame_masks)
            for frame in range(batch.start, batch.stop):
                results.append(self._associate(detections, frame - start, pred_masks[frame]))
            self._store_clip_masks(detections, first_stored)
        return results

    def _detect(self, probs: Tensor, pred_masks: Tensor, pred_logits: Tensor, pred_embeds: Tensor) -> _ClipDetections:
        """Steps 1-2 of the released tracker for T frames at once: sort each frame's queries by their
        best class score, keep those above the select threshold (a prefix of the sorted order) or the
        top one when none passes, and run mask NMS over the kept ones (their masks only).
        probs (T, Q, K+1) softmax of the logits, pred_masks (T, Q, h, w), pred_logits (T, Q, K+1),
        pred_embeds (T, Q, C). Reads no tracking state."""
        config = self.config
        num_frames, num_queries = probs.shape[:2]
        probs_host = _numpy_view(probs)
        if probs_host is not None:
            # max is exact in numpy; a stable sort gives torch's order whenever a frame's scores are
            # all distinct (the only case where every sort agrees). Frames with ties or NaN go to
            # torch.sort, whose CPU order among equal keys is not the stable one.
            max_host = probs_host[:, :, :-1].max(axis=2)                                     # (T, Q)
            order = np.argsort(-max_host, axis=1, kind="stable")
            sorted_host = np.take_along_axis(max_host, order, axis=1)
            for frame in np.flatnonzero(~np.all(sorted_host[:, :-1] > sorted_host[:, 1:], axis=1)).tolist():
                sorted_scores, frame_order = torch.sort(torch.from_numpy(max_host[frame]), dim=0, descending=True)
                order[frame], sorted_host[frame] = frame_order.numpy(), sorted_scores.numpy()
            best_scores = torch.from_numpy(max_host)
        else:
            best_scores = probs[:, :, :-1].max(dim=2).values                                   # (T, Q)
            sorted_scores, order_t = torch.sort(best_scores, dim=1, descending=True)
            order = _host(order_t)
            sorted_host = _host(sorted_scores if sorted_scores.dtype == torch.float64 else sorted_scores.float())
        # float16 (numpy) / bfloat16 (torch only) scores are compared in float32, exactly.
        if sorted_host.dtype not in (np.float32, np.float64):
            sorted_host = sorted_host.astype(np.float32)
        num_selected = np.maximum(1, np.count_nonzero(sorted_host > self._select_thr, axis=1))
        selected = np.arange(num_queries)[None, :] < num_selected[:, None]                   # (T, Q)
        offsets = np.concatenate([[0], np.cumsum(num_selected)])
        queries = order[selected]                                                            # (S,) frame-major
        flat_rows = (np.arange(num_frames)[:, None] * num_queries + order)[selected]
        binary, band_counts, masks = self._candidate_masks(pred_masks, order, num_selected, offsets, flat_rows)
        keep = clip_mask_nms_keep(binary, offsets, config.mask_nms_thr, band_counts)
        # The survivors' logits and embeddings, in one gather each for the clip.
        kept_rows = flat_rows[keep]
        kept_offsets = np.concatenate([[0], np.cumsum(np.add.reduceat(keep, offsets[:-1]))])
        kept_logits = _gather_rows(pred_logits.reshape(num_frames * num_queries, -1), kept_rows)
        kept_embeds = _gather_rows(pred_embeds.reshape(num_frames * num_queries, -1), kept_rows)
        return _ClipDetections(offsets=offsets, queries=queries,
                               scores=sorted_host[selected], flat_rows=flat_rows, keep=keep, masks=masks,
                               best_scores=best_scores.reshape(-1), kept_offsets=kept_offsets,
                               kept_logits=kept_logits, kept_embeds=kept_embeds,
                               kept_logits_host=_numpy_view(kept_logits), kept_embeds_host=_numpy_view(kept_embeds))

    def _candidate_masks(self, pred_masks: Tensor, order: np.ndarray, num_selected: np.ndarray,
                         offsets: np.ndarray, flat_rows: np.ndarray) -> tuple[Tensor, np.ndarray | None, Tensor | None]:
        """The clip's candidates' binary masks (S, h, w), their per-band pixel counts (CPU only,
        else None) and, when the tracker keeps copies, their mask logits (S, h, w): the only
        copy of mask data the tracker makes.

        On CPU the work runs frame by frame on numpy views so that each frame's masks are read once
        from memory and then worked on in cache, and into buffers reused across clips: on this kind
        of machine, writing into freshly allocated pages costs several times the copy itself
        (measured 2.0 ms vs 0.18 ms per frame for 3 MB of masks). The kept copies go to one
        allocation per clip (large enough for the allocator to back it with huge pages)."""
        num_frames, num_queries = pred_masks.shape[:2]
        total = int(offsets[-1])
        frames_host = _numpy_view(pred_masks)
        if frames_host is None:
            masks = _gather_rows(pred_masks.reshape(num_frames * num_queries, *pred_masks.shape[2:]), flat_rows)
            return binarize_mask_logits(masks), None, (masks if self.copy_masks else None)
        mask_shape = pred_masks.shape[2:]
        binary = self._buffer("binary", (total, *mask_shape), np.bool_)
        band_counts = np.empty((total, mask_shape[0] // band_height(*mask_shape)), dtype=np.int32)
        strict = self._buffer("strict", (int(num_selected.max()), *mask_shape), np.bool_)
        if self.copy_masks:
            masks_host = np.empty((total, *mask_shape), dtype=frames_host.dtype)
        else:
            logits = self._buffer("logits", (int(num_selected.max()), *mask_shape), frames_host.dtype)
        for frame in range(num_frames):
            start, count = int(offsets[frame]), int(num_selected[frame])
            out = masks_host[start:start + count] if self.copy_masks else logits[:count]
            # mode="clip": numpy buffers take(out=...) in the default mode (the indices are valid).
            np.take(frames_host[frame], order[frame, :count], axis=0, out=out, mode="clip")
            band_counts[start:start + count] = _binarize_host(out, binary[start:start + count], strict[:count])
        return torch.from_numpy(binary), band_counts, (torch.from_numpy(masks_host) if self.copy_masks else None)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A reused host buffer of at least ``shape`` (its contents are stale)."""
        size = int(np.prod(shape))
        buffer = self._host_buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(max(size, 2 * buffer.size if buffer is not None else 0), dtype=dtype)
            self._host_buffers[name] = buffer
        return buffer[:size].reshape(shape)

    def _associate(self, detections: _ClipDetections, frame: int, pred_masks: Tensor) -> FrameTrackResult:
        """Steps 3-4 of the released tracker for one frame of a clip: match the kept detections with
        the memory bank, start new tracklets, update the bank and the video bookkeeping."""
        config = self.config
        frame_index = self._num_frames
        start, stop = int(detections.offsets[frame]), int(detections.offsets[frame + 1])
        kept_pos = np.flatnonzero(detections.keep[start:stop])
        selected_queries = detections.queries[start:stop]
        kept_queries = selected_queries[kept_pos]
        kept_scores = detections.scores[start:stop][kept_pos]
        kept_start, kept_stop = int(detections.kept_offsets[frame]), int(detections.kept_offsets[frame + 1])
        kept_embeds = detections.kept_embeds[kept_start:kept_stop]

        track_ids = np.full(kept_pos.size, -1, dtype=np.int64)
        if self._next_id > 0 and len(self._memory) > 0:
            matched = self._match(kept_embeds)
            has_match = matched >= 0
            track_ids[has_match] = self._memory.ids[matched[has_match]]
        # A never-started tracker only initialises; afterwards unmatched confident detections start
        # new tracklets. (The released code crashes when every tracklet has died; here the empty
        # bank simply matches nothing.)
        new = (track_ids == -1) & (kept_scores > self._init_thr)
        num_new = int(np.count_nonzero(new))
        track_ids[new] = np.arange(self._next_id, self._next_id + num_new)
        self._next_id += num_new

        has_id = track_ids >= 0
        ids = track_ids[has_id]
        tracked_pos = kept_pos[has_id]
        tracked_queries = kept_queries[has_id]
        tracked = np.flatnonzero(has_id)                     # among the frame's kept detections
        bank_scores = None
        if config.embed_type == "temporally_weighted":
            rows = torch.from_numpy(detections.flat_rows[start + tracked_pos]).to(detections.best_scores.device)
            bank_scores = detections.best_scores.index_select(0, rows)
        if detections.kept_embeds_host is not None:
            tracked_embeds = torch.from_numpy(np.take(detections.kept_embeds_host[kept_start:kept_stop], tracked, axis=0))
            tracked_logits = torch.from_numpy(np.take(detections.kept_logits_host[kept_start:kept_stop], tracked, axis=0))
        else:
            tracked_embeds = _gather_rows(kept_embeds, tracked)
            tracked_logits = _gather_rows(detections.kept_logits[kept_start:kept_stop], tracked)
        self._memory.update(ids, bank_scores, tracked_embeds, frame_index)
        self._memory.drop_dead(frame_index)

        # Video bookkeeping: only the tracked queries' logits and masks are kept. The masks stay
        # where they are: rows of the clip's candidate copy (see _store_clip_masks) or of the
        # caller's frame tensor.
        self._frame_ids.append(ids)
        self._frame_logits.append(tracked_logits)
        if detections.masks is not None:
            self._frame_masks.append(detections.masks[start:stop])
            self._frame_mask_rows.append(tracked_pos)
        else:
            self._frame_masks.append(pred_masks)
            self._frame_mask_rows.append(tracked_queries)
        self._record_entries(ids, frame_index)
        self._num_frames += 1

        assigned = np.full(pred_masks.shape[0], BELOW_SELECT_THR, dtype=np.int64)
        assigned[selected_queries] = REMOVED_BY_NMS
        assigned[kept_queries] = track_ids
        return FrameTrackResult(
            frame_index=frame_index,
            assigned_ids=torch.from_numpy(assigned),
            query_indices=torch.from_numpy(tracked_queries),
            track_ids=torch.from_numpy(ids.copy()),
            live_ids=self.live_ids(),
        )

    def _store_clip_masks(self, detections: _ClipDetections, first_stored: int) -> None:
        """Keep the clip's tracked masks until the end of the video.

        The frames' entries are views of the clip's candidate tensor (already a copy of the
        network's output). When fewer than half of the candidates got a track, the tracked rows are
        copied out instead, so a video never holds more than twice the tracked masks; masks kept on
        another device (``mask_storage_device``) are moved there once per clip. Without copies
        (``copy_masks=False``) the frames' own tensors are kept as they are."""
        candidates = detections.masks
        if candidates is None:
            return
        rows = self._frame_mask_rows[first_stored:]
        num_tracked = sum(frame_rows.size for frame_rows in rows)
        compact = 2 * num_tracked < candidates.shape[0]
        if not compact and candidates.device == self.mask_storage_device:
            return
        if compact:
            flat = np.concatenate([detections.offsets[frame] + frame_rows for frame, frame_rows in enumerate(rows)])
            stored = _gather_rows(candidates, flat).to(self.mask_storage_device)
            offsets = np.concatenate([[0], np.cumsum([frame_rows.size for frame_rows in rows])])
            for frame, frame_rows in enumerate(rows):
                self._frame_masks[first_stored + frame] = stored[int(offsets[frame]):int(offsets[frame + 1])]
                self._frame_mask_rows[first_stored + frame] = np.arange(frame_rows.size)
        else:
            stored = candidates.to(self.mask_storage_device)
            for frame in range(len(rows)):
                start, stop = int(detections.offsets[frame]), int(detections.offsets[frame + 1])
                self._frame_masks[first_stored + frame] = stored[start:stop]

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
        """Update the released ``video_dict`` bookkeeping and drop noise entries.

        Entries live in capacity-doubling arrays (the first ``_num_entries`` rows are used). Only an
        entry seen fewer than ``suppress_frame_num`` times can be dropped as noise, so the noise test
        looks at those "young" entries alone, not at every entry of the video."""
        config = self.config
        if self._entry_of_track.size < self._next_id:
            grown = np.full(max(self._next_id, 2 * self._entry_of_track.size), -1, dtype=np.int64)
            grown[: self._entry_of_track.size] = self._entry_of_track
            self._entry_of_track = grown
        entries = self._entry_of_track[ids]
        new = entries < 0
        num_new = int(np.count_nonzero(new))
        if num_new:
            first = self._num_entries
            if first + num_new > self._entry_track.size:
                capacity = max(first + num_new, 2 * self._entry_track.size, 64)
                for name in ("_entry_track", "_entry_start", "_entry_count", "_entry_last", "_entry_alive"):
                    old = getattr(self, name)
                    grown = np.zeros(capacity, dtype=old.dtype)
                    grown[:first] = old[:first]
                    setattr(self, name, grown)
            created = np.arange(first, first + num_new)
            entries[new] = created
            self._entry_of_track[ids[new]] = created
            self._entry_track[created] = ids[new]
            self._entry_start[created] = frame_index
            self._entry_count[created] = 0
            self._entry_alive[created] = True
            self._num_entries = first + num_new
            self._young_entries = np.concatenate([self._young_entries, created])
        self._entry_count[entries] += 1
        self._entry_last[entries] = frame_index
        young = self._young_entries
        young = young[self._entry_alive[young] & (self._entry_count[young] < config.suppress_frame_num)]
        if frame_index > config.noise_frame_num and young.size:
            # Trailing empty frames = frame_index - last frame present.
            noise = young[frame_index - self._entry_last[young] >= config.none_frame_num]
            if noise.size:
                self._entry_alive[noise] = False
                self._entry_of_track[self._entry_track[noise]] = -1
                young = young[self._entry_alive[young]]
        self._young_entries = young

    @torch.no_grad()
    def current_tracks(self) -> VideoTracks:
        """The video-level outputs for the frames seen so far (see :class:`VideoTracks`)."""
        if self._num_frames == 0:
            raise RuntimeError("VideoTracker.current_tracks(): no frame has been tracked yet")
        num_frames = self._num_frames
        live_entries = np.flatnonzero(self._entry_alive[: self._num_entries])
        num_tracks = live_entries.size
        track_ids = self._entry_track[live_entries]
        row_of_entry = np.full(self._num_entries, -1, dtype=np.int64)
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

        # Where each used record's mask sits in its frame's mask tensor.
        record_mask_rows = np.concatenate(self._frame_mask_rows)
        mask_rows = np.full((num_tracks, num_frames), -1, dtype=np.int64)
        mask_rows[rows, frames] = record_mask_rows[used]

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
                mask_storage_device: torch.device | str | None = None, frames_per_step: int = 16,
                ) -> tuple[VideoTracks, list[FrameTrackResult]]:
    """Whole-video tracking on the streaming tracker.

    pred_logits (T, Q, K+1), pred_masks (T, Q, h, w), pred_embeds (T, Q, C).
    ``frames_per_step`` frames go through :meth:`VideoTracker.step_clip` at a time (bounds the
    detection stage's temporary copies; the result does not depend on it).
    Returns the video tracks and the per-frame results.
    """
    if frames_per_step < 1:
        raise ValueError(f"track_video: frames_per_step must be >= 1, got {frames_per_step}")
    if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_embeds.dim() != 3:
        raise ValueError("track_video expects pred_logits (T,Q,K+1), pred_masks (T,Q,h,w), pred_embeds (T,Q,C); "
                         f"got {tuple(pred_logits.shape)}, {tuple(pred_masks.shape)}, {tuple(pred_embeds.shape)}")
    if not (pred_logits.shape[0] == pred_masks.shape[0] == pred_embeds.shape[0]):
        raise ValueError("track_video: pred_logits, pred_masks and pred_embeds disagree on T: "
                         f"{pred_logits.shape[0]}, {pred_masks.shape[0]}, {pred_embeds.shape[0]}")
    # The whole video is in memory already: keep references to its frames rather than copies, unless
    # the masks are to be moved (to another device for tracking, or for storage).
    same_device = device is None or torch.device(device) == pred_masks.device
    tracker = VideoTracker(config, device=device, mask_storage_device=mask_storage_device,
                           copy_masks=not (same_device and mask_storage_device is None))
    results = []
    for start in range(0, pred_logits.shape[0], frames_per_step):
        clip = slice(start, start + frames_per_step)
        results.extend(tracker.step_clip(pred_logits[clip], pred_masks[clip], pred_embeds[clip]))
    return tracker.finalize(), results
