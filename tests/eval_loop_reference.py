"""A straightforward loop implementation of the official YouTube-VIS evaluation.

It follows the official algorithm step by step (per-frame pycocotools merges for every prediction /
ground-truth pair, per-video greedy matching loops, per-category accumulation loops) and is written
for clarity, not speed: `benchmarks/bench_eval.py` times it side by side with `metrics.evaluate`, and
the tests use it as an independent oracle on randomised inputs.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.evaluation.metrics import AREA_RANGES, IOU_THRESHOLDS, MAX_DETECTIONS, RECALL_THRESHOLDS, summarize


def _to_rle(segmentation, height, width):
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _mean_area(areas) -> float:
    present = [a for a in areas if a]
    return float(np.array(present).mean()) if present else 0.0


def _video_iou(dt_frames, gt_frames) -> float:
    inter = union = 0.0
    for d, g in zip(dt_frames, gt_frames):
        if d and g:
            inter += mask_utils.area(mask_utils.merge([d, g], True))
            union += mask_utils.area(mask_utils.merge([d, g], False))
        elif g:
            union += mask_utils.area(g)
        elif d:
            union += mask_utils.area(d)
    return inter / union if union > 0 else 0.0


def evaluate_loop(ground_truth: dict, results: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (stats (12,), precision (T, R, K, A, M), recall (T, K, A, M))."""
    videos = {v["id"]: v for v in ground_truth["videos"]}
    video_ids = sorted(videos)
    category_ids = sorted(c["id"] for c in ground_truth["categories"])
    category_set = set(category_ids)
    gts, dts = {}, {}
    for ann in ground_truth["annotations"]:
        if ann["video_id"] not in videos or ann["category_id"] not in category_set:
            continue
        video = videos[ann["video_id"]]
        frames = [_to_rle(s, video["height"], video["width"]) if s else None for s in ann["segmentations"]]
        gts.setdefault((ann["video_id"], ann["category_id"]), []).append(
            {"id": ann["id"], "frames": frames, "crowd": bool(ann.get("iscrowd", 0)),
             "area": _mean_area(ann["areas"])})
    for number, res in enumerate(results):
        if res["category_id"] not in category_set:
            continue
        frames = [s if s else None for s in res["segmentations"]]
        areas = [int(mask_utils.area(s)) if s else None for s in frames]
        dts.setdefault((res["video_id"], res["category_id"]), []).append(
            {"id": number + 1, "frames": frames, "score": res["score"], "area": _mean_area(areas)})

    num_t, num_r, num_k, num_a, num_m = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(category_ids),
                                         len(AREA_RANGES), len(MAX_DETECTIONS))
    per_video = {}  # (k, a, video) -> (scores, matched (T, D), dt ignore (T, D), gt ignore (G,))
    for k, category in enumerate(category_ids):
        for video_id in video_ids:
            gt_list = gts.get((video_id, category), [])
            dt_list = dts.get((video_id, category), [])
            if not gt_list and not dt_list:
                continue
            order = sorted(range(len(dt_list)), key=lambda i: -dt_list[i]["score"])  # stable
            dt_list = [dt_list[i] for i in order][: MAX_DETECTIONS[-1]]
            ious = [[_video_iou(d["frames"], g["frames"]) for g in gt_list] for d in dt_list]
            for a, (lo, hi) in enumerate(AREA_RANGES):
                ignore = [g["crowd"] or g["area"] < lo or g["area"] > hi for g in gt_list]
                gt_order = sorted(range(len(gt_list)), key=lambda i: ignore[i])  # stable
                matched_dt = np.zeros((num_t, len(dt_list)))
                dt_ignore = np.zeros((num_t, len(dt_list)), dtype=bool)
                taken = np.zeros((num_t, len(gt_list)), dtype=bool)
                for t, threshold in enumerate(IOU_THRESHOLDS):
                    for di in range(len(dt_list)):
                        best, choice = min(threshold, 1 - 1e-10), -1
                        for gi in gt_order:
                            if taken[t, gi] and not gt_list[gi]["crowd"]:
                                continue
                            if choice > -1 and not ignore[choice] and ignore[gi]:
                                break
                            if ious[di][gi] < best:
                                continue
                            best, choice = ious[di][gi], gi
                        if choice == -1:
                            continue
                        dt_ignore[t, di] = ignore[choice]
                        matched_dt[t, di] = gt_list[choice]["id"]
                        taken[t, choice] = True
                outside = np.array([d["area"] < lo or d["area"] > hi for d in dt_list], dtype=bool)
                dt_ignore |= (matched_dt == 0) & outside[None, :]
                per_video[k, a, video_id] = ([d["score"] for d in dt_list], matched_dt, dt_ignore,
                                             np.array([ignore[i] for i in gt_order], dtype=bool))

    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    for k in range(num_k):
        for a in range(num_a):
            entries = [per_video[k, a, v] for v in video_ids if (k, a, v) in per_video]
            if not entries:
                continue
            num_positive = sum(int((~e[3]).sum()) for e in entries)
            if num_positive == 0:
                continue
            for m, max_dets in enumerate(MAX_DETECTIONS):
                scores = np.concatenate([np.array(e[0][:max_dets], dtype=np.float64) for e in entries])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e[1][:, :max_dets] for e in entries], axis=1)[:, order]
                ignored = np.concatenate([e[2][:, :max_dets] for e in entries], axis=1)[:, order]
                tps = np.cumsum((matched != 0) & ~ignored, axis=1).astype(np.float64)
                fps = np.cumsum((matched == 0) & ~ignored, axis=1).astype(np.float64)
                for t in range(num_t):
                    count = tps.shape[1]
                    rc = tps[t] / num_positive
                    pr = list(tps[t] / (fps[t] + tps[t] + np.spacing(1)))
                    recall[t, k, a, m] = rc[-1] if count else 0
                    for i in range(count - 1, 0, -1):
                        pr[i - 1] = max(pr[i - 1], pr[i])
                    q = np.zeros(num_r)
                    for r, index in enumerate(np.searchsorted(rc, RECALL_THRESHOLDS, side="left")):
                        if index >= count:
                            break
                        q[r] = pr[index]
                    precision[t, :, k, a, m] = q
    return summarize(precision, recall, "ytvis"), precision, recall

