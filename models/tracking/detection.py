"""The detection stage of a clip of frames: select threshold, mask binarisation and mask NMS
(exact IoU from areas, band bounds, integer intersections only where the bound cannot settle).

The full-mask passes (gather the candidates' masks, binarise, count pixels per band of rows, count
pair intersections) are the methods of :class:`MaskPasses`, in torch on any device: the reference
path. ``cpu_kernel.CpuMaskPasses`` computes the same values on numpy views of CPU tensors; the
tracker picks one in ``cpu_kernel.mask_passes_for`` (the one switch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


# Below this logit the float32 ``sigmoid(x) > 0.5`` test can disagree with ``x > 0`` (sigmoid rounds
# to exactly 0.5 for 0 < x < ~6e-8); above it both agree. Only such pixels pay for a sigmoid. Lower
# precisions round sigmoid(x) = 0.5 + x/4 to 0.5 up to x ~ eps: see ambiguous_logit.
_SIGMOID_AMBIGUOUS_LOGIT = 1e-4

# Pairs whose exact intersection is counted by one gathered AND per batch (bounds the temporaries).
INTERSECTION_PAIRS_PER_BATCH = 256


def ambiguous_logit(dtype: torch.dtype) -> float:
    """The logit below which ``x > 0`` may disagree with ``sigmoid(x) > 0.5`` in ``dtype``."""
    return max(_SIGMOID_AMBIGUOUS_LOGIT, 8 * torch.finfo(dtype).eps)


def to_host(tensor: Tensor) -> np.ndarray:
    """A numpy view (CPU) or copy (accelerator) of a small tensor."""
    return tensor.detach().cpu().numpy()


@dataclass(frozen=True)
class CandidateMasks:
    """The selected candidates of a clip, S in all: binary (S, h, w) bool ``sigmoid > 0.5``;
    band_counts (S, bands) int32 host, True pixels per band of ``band_height`` rows; logits
    (S, h, w) a copy of their mask logits, or None when the tracker keeps references instead."""

    binary: Tensor
    band_counts: np.ndarray
    logits: Tensor | None


@dataclass(frozen=True)
class ClipDetections:
    """The detection stage of a clip of T frames (see ``VideoTracker._detect``). S candidates in
    all, frame by frame: frame t owns positions offsets[t]:offsets[t + 1], in descending score order.

    queries (S,) query index; can_start (S,) score above ``init_score_thr``; flat_rows (S,) row in
    the clip's (T * Q) queries; keep (S,) survived mask NMS (all host arrays); masks (S, h, w) a copy
    of the candidates' mask logits (None when the tracker keeps references instead); best_scores
    (T * Q,) every query's best-class score (on the tracker's device). The D candidates that
    survived NMS, frame by frame (frame t owns kept_offsets[t]:kept_offsets[t + 1]): kept_logits
    (D, K+1) and kept_embeds (D, C), gathered once for the clip.
    """

    offsets: np.ndarray
    queries: np.ndarray
    can_start: np.ndarray
    flat_rows: np.ndarray
    keep: np.ndarray
    masks: Tensor | None
    best_scores: Tensor
    kept_offsets: np.ndarray
    kept_logits: Tensor
    kept_embeds: Tensor


def binarize_mask_logits(mask_logits: Tensor) -> Tensor:
    """``mask_logits.sigmoid() > 0.5`` bit for bit, without a sigmoid on every pixel.

    ``x <= 0`` gives ``sigmoid(x) <= 0.5`` and ``x > 1e-4`` gives ``sigmoid(x) > 0.5`` in float32;
    only the rare logits in between are evaluated with the real sigmoid.
    """
    binary = mask_logits > 0
    strict = mask_logits > ambiguous_logit(mask_logits.dtype)
    # The strict test is a subset of the plain one: equal counts mean equal masks (almost always).
    if _count_true(binary) != _count_true(strict):
        ambiguous = binary & ~strict
        binary[ambiguous] = mask_logits[ambiguous].sigmoid() > 0.5
    return binary


def _count_true(mask: Tensor) -> int:
    accumulator = torch.int32 if mask.numel() < 2 ** 31 else torch.int64
    return int(mask.view(torch.uint8).sum(dtype=accumulator))


def band_height(height: int, width: int) -> int:
    """Rows per band of the per-band pixel counts for (h, w) masks: 4, 2 or 1 (it divides h, and a
    band is fewer than 2048 pixels, which the CPU kernel's byte-lane sums rely on)."""
    for rows in (4, 2):
        if height % rows == 0 and rows * width < 2048:
            return rows
    return 1


class MaskPasses:
    """The full-mask passes of the detection stage, in torch on any device (the reference path)."""

    def candidate_masks(self, pred_masks: Tensor, flat_rows: np.ndarray, offsets: np.ndarray,
                        keep_copy: bool) -> CandidateMasks:
        """The candidates' masks. pred_masks (T, Q, h, w) logits; flat_rows (S,) the candidates'
        rows in the clip's (T * Q) queries, frame t owning offsets[t]:offsets[t + 1]; keep_copy:
        also return their mask logits (the only copy of mask data the tracker makes)."""
        num_frames, num_queries, height, width = pred_masks.shape
        rows = torch.from_numpy(flat_rows).to(pred_masks.device)
        logits = pred_masks.reshape(num_frames * num_queries, height, width).index_select(0, rows)
        binary = binarize_mask_logits(logits)
        return CandidateMasks(binary, self.band_counts(binary), logits if keep_copy else None)

    def band_counts(self, binary: Tensor) -> np.ndarray:
        """(n, h / g) int32 host: True pixels per band of g = ``band_height(h, w)`` rows of (n, h, w)."""
        num, height, width = binary.shape
        rows = band_height(height, width)
        return to_host(binary.view(torch.uint8).reshape(num, height // rows, rows * width).sum(dim=2, dtype=torch.int32))

    def intersections(self, binary: Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(p,) int64 pixel counts of ``binary[first] & binary[second]``."""
        flat = binary.reshape(binary.shape[0], -1)
        counts = np.zeros(first.size, dtype=np.int64)
        for begin in range(0, first.size, INTERSECTION_PAIRS_PER_BATCH):
            batch = slice(begin, begin + INTERSECTION_PAIRS_PER_BATCH)
            index = torch.from_numpy(np.stack([first[batch], second[batch]])).to(binary.device)
            counts[batch] = to_host(torch.count_nonzero(flat[index[0]] & flat[index[1]], dim=1))
        return counts


def mask_nms_keep(binary_masks: Tensor, nms_thr: float, passes: MaskPasses | None = None) -> np.ndarray:
    """Greedy mask NMS of score-sorted masks; returns a host bool keep vector (n,).

    binary_masks: (n, h, w) bool, sorted by descending score. Mask j is dropped when a kept mask
    i < j has IoU ``(inter + 1e-6) / (union + 1e-6) > nms_thr`` (the released float32 formula, so
    two empty masks have IoU 1). One frame of :func:`clip_mask_nms_keep`.
    """
    return clip_mask_nms_keep(binary_masks, np.array([0, binary_masks.shape[0]]), nms_thr, passes=passes)


def _float32_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """The released ``(inter + 1e-6) / (union + 1e-6)`` in float32 (what torch computes for integer
    counts plus a Python float), from exact integer counts."""
    eps = np.float32(1e-6)
    return (intersection.astype(np.float32) + eps) / (union.astype(np.float32) + eps)


def clip_mask_nms_keep(binary_masks: Tensor, offsets: np.ndarray, nms_thr: float,
                       band_counts: np.ndarray | None = None, passes: MaskPasses | None = None) -> np.ndarray:
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
    ``band_counts``: the (S, bands) counts of ``passes.band_counts`` when the caller has them;
    ``passes``: the full-mask passes to use (default the torch ones).
    """
    passes = passes if passes is not None else MaskPasses()
    total = binary_masks.shape[0]
    offsets = np.asarray(offsets, dtype=np.int64)
    keep = np.ones(total, dtype=bool)
    counts = np.diff(offsets)
    if total <= 1 or counts.max() <= 1:
        return keep
    if band_counts is None:
        band_counts = passes.band_counts(binary_masks)                               # (S, bands)
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
        intersection = _pair_intersections(binary_masks, passes, first[undecided], second[undecided],
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


def _pair_intersections(binary_masks: Tensor, passes: MaskPasses, first: np.ndarray, second: np.ndarray,
                        pair_frame: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(p,) int64 exact pixel counts of ``mask[first] & mask[second]`` (masks of one frame per pair)."""
    intersection = np.zeros(first.size, dtype=np.int64)
    pairs_per_frame = np.bincount(pair_frame, minlength=offsets.size - 1)
    # A frame with more such pairs than masks: one matmul of its flattened masks is cheaper.
    dense_frames = np.flatnonzero(pairs_per_frame > np.diff(offsets))
    flat = binary_masks.reshape(binary_masks.shape[0], -1)
    for frame in dense_frames.tolist():
        start, stop = int(offsets[frame]), int(offsets[frame + 1])
        in_frame = np.flatnonzero(pair_frame == frame)
        # 0/1 products summed in float32 are exact integers (up to 2^24 pixels per mask).
        flat_float = flat[start:stop].to(torch.float32)
        products = to_host((flat_float @ flat_float.T).round_().to(torch.long))
        intersection[in_frame] = products[first[in_frame] - start, second[in_frame] - start]
    gathered = np.flatnonzero(~np.isin(pair_frame, dense_frames))
    if gathered.size:
        intersection[gathered] = passes.intersections(binary_masks, first[gathered], second[gathered])
    return intersection
