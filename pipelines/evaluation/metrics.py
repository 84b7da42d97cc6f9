"""The official YouTube-VIS (and OVIS) video instance segmentation metrics, vectorised.

Same numbers as `YTVOSeval` / `OVISeval` (youtubevos/cocoapi as copied into CTVIS; qjy981010/cocoapi):

- Video IoU of a prediction d and a ground truth g: sum over frames of the intersections divided by the
  sum over frames of the unions, over the frames both segmentation lists have (`zip` truncates); a frame
  null on one side adds the other side's mask area to the union; a frame where the two mask sizes
  differ adds nothing (pycocotools merges such masks into an empty mask); a union of 0 gives IoU 0.
- Per video and category, predictions are sorted by score (stable: file order on ties) and cut to 100.
- Ground truth is ignored when crowd or when its mean JSON area (over non-null, non-zero frames) is
  outside the inclusive area range (OVIS: or its occlusion score outside the occlusion range).
- Greedy matching per IoU threshold in score order: a prediction takes, among the unmatched (or crowd)
  ground truths with IoU >= threshold, the best non-ignored one, else the best ignored one; on equal IoU
  the later ground truth in (non-ignored first, file) order wins. A match to ground-truth id 0 counts
  as unmatched for the prediction (official quirk) but uses up the ground truth.
- Unmatched predictions whose mean area is outside the area range are ignored.
- Accumulation per category, area range and max-detections cut: predictions of all videos concatenated
  in video-id order, stable-sorted by score; precision made monotone from the right and read at the
  101 `np.linspace` recall thresholds (searchsorted 'left'); recall is the last cumulative recall.

Speed comes from three things: IoUs below the lowest threshold never influence a match, so pairs whose
IoU cannot reach it (bounded by the per-frame smaller mask area) are not intersected; the remaining frame
intersections run in C in large batches; matching and accumulation are vectorised over all videos,
categories, area ranges and thresholds at once. Pairs skipped this way report IoU 0 in `pair_ious`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from .data import GroundTruth, Predictions
from .rle import intersect_counts, intersections

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = ((0.0, 1e5 ** 2), (0.0, 128.0 ** 2), (128.0 ** 2, 256.0 ** 2), (256.0 ** 2, 1e5 ** 2))
AREA_LABELS = ("all", "small", "medium", "large")
OCCLUSION_RANGES = ((0.0, 1.0), (0.0, 0.25), (0.25, 0.5), (0.5, 1.0))
OCCLUSION_LABELS = ("all", "light", "medium", "heavy")

YTVIS_STAT_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L",
                    "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")
OVIS_STAT_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AP_occ_light", "AP_occ_medium",
                   "AP_occ_heavy", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L", "AR_occ_light",
                   "AR_occ_medium", "AR_occ_heavy")
# (AP?, IoU threshold or None for the mean, area label, occlusion label, max detections)
_YTVIS_STATS = [(1, None, "all", "all", 100), (1, 0.5, "all", "all", 100), (1, 0.75, "all", "all", 100),
                (1, None, "small", "all", 100), (1, None, "medium", "all", 100), (1, None, "large", "all", 100),
                (0, None, "all", "all", 1), (0, None, "all", "all", 10), (0, None, "all", "all", 100),
                (0, None, "small", "all", 100), (0, None, "medium", "all", 100), (0, None, "large", "all", 100)]
_OVIS_STATS = (_YTVIS_STATS[:6] + [(1, None, "all", occ, 100) for occ in ("light", "medium", "heavy")]
               + _YTVIS_STATS[6:] + [(0, None, "all", occ, 100) for occ in ("light", "medium", "heavy")])

Benchmark = Literal["ytvis", "ovis"]
# Runs `intersections` over a list of work items; lets a caller spread the work (e.g. over Ray).
IntersectionMap = Callable[[list], list]


@dataclass
class Evaluation:
    """Result of one evaluation. Arrays follow the official layout:
    precision (T, R, K, A, M) and recall (T, K, A, M); OVIS: (T, R, K, A, O, M) and (T, K, A, O, M),
    with T IoU thresholds, R recall thresholds, K categories (sorted ids), A area ranges,
    O occlusion ranges, M max-detection cuts; -1 where a slice has no ground truth."""

    benchmark: str
    stat_names: tuple[str, ...]
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]
    num_videos: int
    num_ground_truth: int
    num_predictions: int
    warnings: list[str] = field(default_factory=list)

    @property
    def stats_by_name(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.stat_names, self.stats)}

    def per_category(self) -> list[dict]:
        """AP, AP50, AP75, AR1, AR10, AR100 of each category (None where it has no ground truth)."""
        rows = []
        area_all = (0,) * (self.precision.ndim - 4)  # 'all' area (and 'all' occlusion for OVIS)
        for k, (category_id, name) in enumerate(zip(self.category_ids.tolist(), self.category_names)):
            precision = self.precision[(slice(None), slice(None), k) + area_all]  # (T, R, M)
            recall = self.recall[(slice(None), k) + area_all]                     # (T, M)
            row = {"category_id": category_id, "name": name,
                   "AP": _mean_valid(precision[:, :, 2]), "AP50": _mean_valid(precision[0, :, 2]),
                   "AP75": _mean_valid(precision[5, :, 2])}
            for m, max_dets in enumerate(MAX_DETECTIONS):
                row[f"AR{max_dets}"] = _mean_valid(recall[:, m])
            rows.append({key: (None if isinstance(v, float) and v == -1 else v) for key, v in row.items()})
        return rows


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else -1.0


def _lookup(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """values[ids] where ids >= 0, else 0 (ids of absent frames are -1)."""
    if len(values) == 0:
        return np.zeros(len(ids), dtype=values.dtype)
    return np.where(ids >= 0, values[np.maximum(ids, 0)], 0)


def _segment_ranges(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given lengths: (segment of each element, position inside its segment)."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(len(owner)) - starts[owner]


def _intersection_task(item: tuple) -> np.ndarray:
    """One chunk of intersection work: (counts_a, counts_b, areas_a) -> intersections."""
    return intersect_counts(*item)


def pair_ious(gt: GroundTruth, preds: Predictions, dt_index: np.ndarray, gt_index: np.ndarray,
              min_iou: float, parallel_map: IntersectionMap | None = None) -> np.ndarray:
    """Video IoU of every (prediction, ground truth) pair (P,), exact wherever it is >= min_iou;
    pairs that cannot reach min_iou get 0 without being intersected. Predictions sharing a track
    (identical segmentation lists) share their IoU rows: each (track, ground truth) pair is computed once."""
    num_pairs = len(dt_index)
    if num_pairs == 0:
        return np.zeros(0)
    track = preds.entry_track[dt_index]
    num_gt = max(len(gt.ann_ids), 1)
    pair_key, pair_of_unique = np.unique(track * num_gt + gt_index, return_inverse=True)
    return _track_pair_ious(gt, preds, pair_key // num_gt, pair_key % num_gt, min_iou,
                            parallel_map)[pair_of_unique.reshape(-1)]


def _track_pair_ious(gt: GroundTruth, preds: Predictions, track: np.ndarray, gt_index: np.ndarray,
                     min_iou: float, parallel_map: IntersectionMap | None) -> np.ndarray:
    """pair_ious for (track, ground truth) pairs (P,)."""
    num_pairs = len(track)
    ious = np.zeros(num_pairs)
    dt_len = np.diff(preds.track_offsets)[track]
    gt_len = np.diff(gt.frame_offsets)[gt_index]
    pair_of_frame, t = _segment_ranges(np.minimum(dt_len, gt_len))  # zip() truncation
    dt_frame = preds.track_frame_ids[preds.track_offsets[track][pair_of_frame] + t]
    gt_frame = gt.frame_ids[gt.frame_offsets[gt_index][pair_of_frame] + t]
    dt_area = _lookup(preds.table.areas, dt_frame)
    gt_area = _lookup(gt.table.areas, gt_frame)
    both = (dt_frame >= 0) & (gt_frame >= 0)
    same_size = both & (_lookup(preds.table.heights, dt_frame) == _lookup(gt.table.heights, gt_frame)) \
        & (_lookup(preds.table.widths, dt_frame) == _lookup(gt.table.widths, gt_frame))
    # Union = areas - intersection; masks of different sizes merge to nothing (official pycocotools).
    area_sum = np.where(both & ~same_size, 0, dt_area + gt_area)
    union_plus = np.bincount(pair_of_frame, weights=area_sum, minlength=num_pairs)

    def reachable(bound: np.ndarray) -> np.ndarray:
        inter = np.bincount(pair_of_frame, weights=bound, minlength=num_pairs)
        # IoU <= I / (U + I - I) with I at its bound; keep the pair when that can reach min_iou.
        return (inter > 0) & (inter * (1.0 + min_iou) >= min_iou * union_plus * (1.0 - 1e-12))

    bound = np.where(same_size, np.minimum(dt_area, gt_area), 0)
    alive = reachable(bound)
    # Boxes would tighten the bound, but computing them costs about as much as intersecting.
    frames = np.flatnonzero(alive[pair_of_frame] & same_size & (bound > 0))
    ids_dt, ids_gt = dt_frame[frames], gt_frame[frames]
    if parallel_map is None:
        inter_frames = intersections(preds.table, ids_dt, gt.table, ids_gt)
    else:
        chunks = np.array_split(np.arange(len(frames)), max(1, min(len(frames) // 2048, 64)))
        items = [([preds.table.counts[i] for i in ids_dt[c].tolist()],
                  [gt.table.counts[i] for i in ids_gt[c].tolist()], preds.table.areas[ids_dt[c]]) for c in chunks]
        inter_frames = np.concatenate(parallel_map(items)) if items else np.zeros(0, dtype=np.int64)
    inter = np.bincount(pair_of_frame[frames], weights=inter_frames, minlength=num_pairs)
    union = union_plus - inter
    np.divide(inter, union, out=ious, where=alive & (union > 0))
    return ious


def _rank_in_groups(sorted_groups: np.ndarray) -> np.ndarray:
    return np.arange(len(sorted_groups)) - np.searchsorted(sorted_groups, sorted_groups, side="left")


def evaluate(gt: GroundTruth, preds: Predictions, benchmark: Benchmark = "ytvis",
             parallel_map: IntersectionMap | None = None) -> Evaluation:
    """Evaluates predictions against ground truth exactly as the official YTVOSeval / OVISeval."""
    if benchmark not in ("ytvis", "ovis"):
        raise ValueError(f"benchmark must be 'ytvis' or 'ovis', got {benchmark!r}")
    num_categories = len(gt.category_ids)
    num_thresholds = len(IOU_THRESHOLDS)
    max_dets = MAX_DETECTIONS[-1]
    warnings: list[str] = []
    if benchmark == "ovis":
        if len(gt.ann_ids) and np.isnan(gt.ann_occ_score).any():
            first = int(gt.ann_ids[np.flatnonzero(np.isnan(gt.ann_occ_score))[0]])
            raise ValueError(f"{gt.source}: OVIS evaluation needs 'occlusion' labels on every annotation "
                             f"(annotation id {first} has none)")
        slices = [(area, occ) for area in AREA_RANGES for occ in OCCLUSION_RANGES]
    else:
        slices = [(area, (-np.inf, np.inf)) for area in AREA_RANGES]
    area_lo = np.array([s[0][0] for s in slices])
    area_hi = np.array([s[0][1] for s in slices])
    occ_lo = np.array([s[1][0] for s in slices])
    occ_hi = np.array([s[1][1] for s in slices])
    num_slices = len(slices)

    # Ground truth grouped by (video, category), file order inside a group. gt_ignore: (S, N).
    gt_group = gt.ann_video * num_categories + gt.ann_category
    gt_order = np.argsort(gt_group, kind="stable")
    gt_group_sorted = gt_group[gt_order]
    area = gt.ann_avg_area[None, :]
    occ = np.nan_to_num(gt.ann_occ_score, nan=0.0)[None, :]
    gt_ignore = gt.ann_crowd[None, :] | (area < area_lo[:, None]) | (area > area_hi[:, None]) \
        | (occ < occ_lo[:, None]) | (occ > occ_hi[:, None])

    # Predictions of listed videos and categories, by (video, category), score-sorted (stable), top 100.
    video = gt.video_index(preds.video_ids)
    category = np.searchsorted(gt.category_ids, preds.category_ids) if num_categories else \
        np.zeros(len(preds), dtype=np.int64)
    category = np.minimum(category, max(num_categories - 1, 0))
    listed = (video >= 0) & (num_categories > 0)
    if num_categories:
        listed &= gt.category_ids[category] == preds.category_ids
    candidates = np.flatnonzero(listed)
    dt_group = video[candidates] * num_categories + category[candidates]
    order = np.lexsort((-preds.scores[candidates], dt_group))
    candidates, dt_group = candidates[order], dt_group[order]
    rank = _rank_in_groups(dt_group)
    kept = rank < max_dets
    dts, dt_group, dt_rank = candidates[kept], dt_group[kept], rank[kept]
    num_dts = len(dts)
    dt_area = preds.avg_area[dts]
    dt_outside = (dt_area[None, :] < area_lo[:, None]) | (dt_area[None, :] > area_hi[:, None])  # (S, D)

    # All (prediction, ground truth) pairs of a group: pairs of dt i are contiguous, in gt file order.
    gt_lo = np.searchsorted(gt_group_sorted, dt_group, side="left")
    gt_count = np.searchsorted(gt_group_sorted, dt_group, side="right") - gt_lo
    pair_dt, pair_offset = _segment_ranges(gt_count)
    pair_gt_sorted = gt_lo[pair_dt] + pair_offset
    ious = pair_ious(gt, preds, dts[pair_dt], gt_order[pair_gt_sorted], float(IOU_THRESHOLDS.min()),
                     parallel_map)

    # Greedy matching, only where some pair reaches the lowest threshold. match: (D, S, T) gt index.
    match = np.full((num_dts, num_slices, num_thresholds), -1, dtype=np.int64)
    reaching = ious >= IOU_THRESHOLDS.min()
    if reaching.any():
        _match_groups(gt, gt_ignore, gt_order, gt_group_sorted, dt_group, pair_dt, pair_gt_sorted,
                      ious, reaching, match)
    matched = match >= 0
    matched_id = np.where(matched, gt.ann_ids[np.maximum(match, 0)] if len(gt.ann_ids) else 0, 0)
    slice_index = np.arange(num_slices)[None, :, None]
    matched_ignored = matched & gt_ignore[slice_index, np.maximum(match, 0)] if len(gt.ann_ids) else matched
    counted_match = matched_id != 0  # a match to gt id 0 reads as "no match" (official quirk)
    dt_ignore = matched_ignored | (~counted_match & dt_outside.T[:, :, None])
    true_pos = counted_match & ~dt_ignore
    false_pos = ~counted_match & ~dt_ignore

    # Non-ignored ground truth per (category, slice).
    num_positive = np.zeros((num_categories, num_slices), dtype=np.int64)
    for s in range(num_slices):
        num_positive[:, s] = np.bincount(gt.ann_category[~gt_ignore[s]], minlength=num_categories)
    precision, recall = _accumulate(dt_group % max(num_categories, 1), dt_group // max(num_categories, 1),
                                    dt_rank, preds.scores[dts], true_pos, false_pos, num_positive)
    if benchmark == "ovis":
        shape_p = precision.shape[:3] + (len(AREA_RANGES), len(OCCLUSION_RANGES)) + precision.shape[4:]
        shape_r = recall.shape[:2] + (len(AREA_RANGES), len(OCCLUSION_RANGES)) + recall.shape[3:]
        precision, recall = precision.reshape(shape_p), recall.reshape(shape_r)
    stats = summarize(precision, recall, benchmark)
    if len(preds) == 0:
        warnings.append("no predictions: every statistic with ground truth is 0")
    return Evaluation(
        benchmark=benchmark, stat_names=OVIS_STAT_NAMES if benchmark == "ovis" else YTVIS_STAT_NAMES,
        stats=stats, precision=precision, recall=recall, category_ids=gt.category_ids,
        category_names=gt.category_names, num_videos=len(gt.video_ids), num_ground_truth=len(gt.ann_ids),
        num_predictions=num_dts, warnings=warnings,
    )


def _match_groups(gt, gt_ignore, gt_order, gt_group_sorted, dt_group, pair_dt, pair_gt_sorted,
                  ious, reaching, match) -> None:
    """Official greedy matching for every (video, category) group that has a pair >= lowest threshold.

    Groups are bucketed by their number of ground truths G; within a bucket, step j handles the j-th
    prediction (in score order) of every group that has one, for all slices and thresholds at once."""
    num_slices, num_thresholds = match.shape[1], match.shape[2]
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    # Predictions that can match at all (some IoU >= lowest threshold), in dt order = group/score order.
    dt_can = np.zeros(len(dt_group), dtype=bool)
    dt_can[pair_dt[reaching]] = True
    can = np.flatnonzero(dt_can)
    can_group = dt_group[can]
    groups, group_start, group_size = np.unique(can_group, return_index=True, return_counts=True)
    gt_lo = np.searchsorted(gt_group_sorted, groups, side="left")
    gt_count = np.searchsorted(gt_group_sorted, groups, side="right") - gt_lo
    # Pair index of (dt, first gt of its group): pairs of one dt are contiguous.
    first_pair = np.searchsorted(pair_dt, np.arange(len(dt_group)), side="left")
    for num_gt in np.unique(gt_count):
        bucket = np.flatnonzero(gt_count == num_gt)
        n, width = len(bucket), int(group_size[bucket].max())
        gts_sorted = gt_lo[bucket][:, None] + np.arange(num_gt)[None, :]    # (n, G) positions
        gt_global = gt_order[gts_sorted]                                     # (n, G) annotation index
        crowd = gt.ann_crowd[gt_global]                                      # (n, G)
        ignore = np.moveaxis(gt_ignore[:, gt_global], 0, 1)                  # (n, S, G)
        # Position of each gt in the official order: non-ignored first, file order (stable sort).
        position = np.where(ignore, np.cumsum(ignore, -1) - 1 + (~ignore).sum(-1, keepdims=True),
                            np.cumsum(~ignore, -1) - 1)
        # dt_of[b, j]: the j-th matchable prediction of group b (-1 past its end).
        j_index = np.arange(width)[None, :]
        dt_of = np.where(j_index < group_size[bucket][:, None],
                         can[np.minimum(group_start[bucket][:, None] + j_index, len(can) - 1)], -1)
        taken = np.zeros((n, num_slices, num_thresholds, num_gt), dtype=bool)
        for j in range(width):
            rows = np.flatnonzero(dt_of[:, j] >= 0)
            dt = dt_of[rows, j]
            iou = ious[first_pair[dt][:, None] + np.arange(num_gt)[None, :]][:, None, None, :]  # (r,1,1,G)
            free = ~taken[rows] | crowd[rows][:, None, None, :]
            candidate = free & (iou >= thresholds[None, None, :, None])
            ign = ignore[rows][:, :, None, :]
            regular = candidate & ~ign
            chosen_set = np.where(regular.any(-1, keepdims=True), regular, candidate & ign)
            best = np.where(chosen_set, iou, -np.inf).max(-1, keepdims=True)
            tied = chosen_set & (iou == best)
            pos = np.broadcast_to(position[rows][:, :, None, :], tied.shape)
            choice = np.where(tied, pos, -1).argmax(-1)                                   # (r, S, T)
            found = chosen_set.any(-1)
            r_idx, s_idx, t_idx = np.nonzero(found)
            g_idx = choice[r_idx, s_idx, t_idx]
            taken[rows[r_idx], s_idx, t_idx, g_idx] = True
            match[dt[r_idx], s_idx, t_idx] = gt_global[rows[r_idx], g_idx]


def _accumulate(dt_category, dt_video, dt_rank, dt_score, true_pos, false_pos, num_positive):
    """Official accumulate(). true_pos/false_pos: (D, S, T) bool; num_positive: (K, S).
    Returns precision (T, R, K, S, M) and recall (T, K, S, M)."""
    num_categories, num_slices = num_positive.shape
    num_thresholds, num_recall = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((num_thresholds, num_recall, num_categories, num_slices, len(MAX_DETECTIONS)))
    recall = -np.ones((num_thresholds, num_categories, num_slices, len(MAX_DETECTIONS)))
    # Order of the official concatenation + stable sort: category, -score, video, rank in the video.
    order = np.lexsort((dt_rank, dt_video, -dt_score, dt_category))
    category_sorted, rank_sorted = dt_category[order], dt_rank[order]
    tp_sorted, fp_sorted = true_pos[order], false_pos[order]
    # Recall thresholds as counts: fl(c / n) < thr  <=>  c < first_count[n][thr] (fl monotone in c).
    first_count = {}
    for n in np.unique(num_positive[num_positive > 0]).tolist():
        first_count[n] = np.searchsorted(np.arange(n + 1) / n, RECALL_THRESHOLDS, side="left")
    for m, max_dets in enumerate(MAX_DETECTIONS):
        within = rank_sorted < max_dets
        cats = category_sorted[within]
        tp_all, fp_all = tp_sorted[within], fp_sorted[within]
        bounds = np.searchsorted(cats, np.arange(num_categories + 1), side="left")
        for k in range(num_categories):
            valid_slices = np.flatnonzero(num_positive[k] > 0)
            if len(valid_slices) == 0:
                continue
            lo, hi = bounds[k], bounds[k + 1]
            nd = hi - lo
            npig = num_positive[k, valid_slices]                                    # (s,)
            tp = np.cumsum(np.moveaxis(tp_all[lo:hi, valid_slices], 0, -1), axis=-1)  # (s, T, nd)
            fp = np.cumsum(np.moveaxis(fp_all[lo:hi, valid_slices], 0, -1), axis=-1)
            tp_f, fp_f = tp.astype(np.float64), fp.astype(np.float64)
            if nd == 0:
                recall[:, k, valid_slices, m] = 0
                precision[:, :, k, valid_slices, m] = 0
                continue
            recall[:, k, valid_slices, m] = (tp_f[:, :, -1] / npig[:, None]).T
            pr = tp_f / (fp_f + tp_f + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, :, ::-1], axis=-1)[:, :, ::-1]
            # searchsorted(rc, thresholds, 'left') for every row at once, on integer counts.
            rows = tp.reshape(-1, nd)
            stride = nd + 2
            offsets = np.arange(rows.shape[0])[:, None] * stride
            thresholds = np.stack([first_count[n] for n in npig.tolist()])         # (s, R)
            queries = np.minimum(np.repeat(thresholds, num_thresholds, axis=0), nd + 1) + offsets
            index = np.searchsorted((rows + offsets).ravel(), queries.ravel()).reshape(queries.shape) \
                - offsets // stride * nd
            flat_pr = pr.reshape(-1, nd)
            q = np.where(index < nd, np.take_along_axis(flat_pr, np.minimum(index, nd - 1), axis=1), 0.0)
            # q: (s*T, R) -> precision[T, R, k, s, m]
            precision[:, :, k, valid_slices, m] = q.reshape(len(valid_slices), num_thresholds, num_recall) \
                .transpose(1, 2, 0)
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray, benchmark: Benchmark = "ytvis") -> np.ndarray:
    """The official summarize(): 12 stats (YouTube-VIS) or 18 (OVIS), -1 where no ground truth."""
    definitions = _OVIS_STATS if benchmark == "ovis" else _YTVIS_STATS
    stats = np.zeros(len(definitions))
    for i, (is_ap, iou, area, occ, max_dets) in enumerate(definitions):
        a = AREA_LABELS.index(area)
        m = MAX_DETECTIONS.index(max_dets)
        index = (a, OCCLUSION_LABELS.index(occ), m) if benchmark == "ovis" else (a, m)
        values = precision if is_ap else recall
        if iou is not None:
            values = values[np.where(iou == IOU_THRESHOLDS)[0]]
        values = values[(slice(None), slice(None), slice(None)) + index] if is_ap else \
            values[(slice(None), slice(None)) + index]
        valid = values[values > -1]
        stats[i] = np.mean(valid) if len(valid) else -1
    return stats
