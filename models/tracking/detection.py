"""The detection stage of a clip of frames: select threshold, mask binarisation and mask NMS
(exact IoU from areas, band bounds, integer intersections only where the bound cannot settle)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .host import _ambiguous_logit, _float32_iou, _host, _numpy_view

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




def _count_true(mask: Tensor) -> int:
    accumulator = torch.int32 if mask.numel() < 2 ** 31 else torch.int64
    return int(mask.view(torch.uint8).sum(dtype=accumulator))




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
