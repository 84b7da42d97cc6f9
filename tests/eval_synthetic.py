"""Deterministic synthetic YouTube-VIS ground truth and CTVIS-style predictions.

Used by the evaluation benchmark (a 300-video case shaped like the held-back timing case) and by
the tests (small cases). Objects are moving ellipses that appear and disappear; predictions are
derived from the ground truth the way an online tracker's top-k output looks: each predicted track
is emitted once with its best class and re-emitted with several other classes at low scores, plus
duplicate tracks and false positives. Scores are rounded to 3 decimals, so there are many ties.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class SyntheticCaseConfig:
    num_videos: int = 300
    min_frames: int = 20
    max_frames: int = 36
    height: int = 180
    width: int = 320
    num_categories: int = 40
    min_gt_tracks: int = 3
    max_gt_tracks: int = 7
    min_predictions: int = 20
    max_predictions: int = 100
    seed: int = 0


def _ellipse_track(rng: np.random.Generator, num_frames: int, height: int, width: int,
                   first: int, last: int, center: np.ndarray, velocity: np.ndarray,
                   radii: np.ndarray) -> np.ndarray:
    """Masks (H, W, T) uint8, Fortran order, of an ellipse moving linearly on frames first..last."""
    masks = np.zeros((height, width, num_frames), dtype=np.uint8, order="F")
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    wobble = rng.uniform(0.9, 1.1, size=(num_frames, 2))
    for t in range(first, last + 1):
        cy, cx = center + velocity * (t - first)
        ry, rx = radii * wobble[t]
        y0, y1 = int(max(0, np.floor(cy - ry))), int(min(height, np.ceil(cy + ry) + 1))
        x0, x1 = int(max(0, np.floor(cx - rx))), int(min(width, np.ceil(cx + rx) + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        inside = ((ys[y0:y1] - cy) / ry) ** 2 + ((xs[:, x0:x1] - cx) / rx) ** 2 <= 1.0
        masks[y0:y1, x0:x1, t] = inside
    return masks


def _encode(masks: np.ndarray) -> list[dict]:
    """(H, W, T) uint8 -> T compressed RLEs with str counts."""
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def make_synthetic_case(config: SyntheticCaseConfig = SyntheticCaseConfig()) -> tuple[dict, list[dict]]:
    """Returns (ground-truth dataset dict, results list) in the official YouTube-VIS formats."""
    rng = np.random.default_rng(config.seed)
    height, width = config.height, config.width
    videos, annotations, results = [], [], []
    categories = [{"id": k, "name": f"cat_{k:02d}", "supercategory": "object"}
                  for k in range(1, config.num_categories + 1)]
    for video_id in range(1, config.num_videos + 1):
        num_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
        videos.append({"id": video_id, "width": width, "height": height, "length": num_frames,
                       "file_names": [f"{video_id:05d}/{t:05d}.jpg" for t in range(num_frames)]})
        num_gt = int(rng.integers(config.min_gt_tracks, config.max_gt_tracks + 1))
        pred_tracks = []  # (masks, best category, best score)
        for _ in range(num_gt):
            category = int(rng.integers(1, config.num_categories + 1))
            first = int(rng.integers(0, num_frames // 3))
            last = int(rng.integers(2 * num_frames // 3, num_frames))
            center = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
            velocity = rng.uniform(-2.0, 2.0, size=2)
            radii = rng.uniform([6, 8], [0.4 * height, 0.3 * width])
            gt_masks = _ellipse_track(rng, num_frames, height, width, first, last, center, velocity, radii)
            rles = _encode(gt_masks)
            areas = gt_masks.sum(axis=(0, 1))
            present = [first <= t <= last for t in range(num_frames)]
            annotations.append({
                "id": len(annotations) + 1, "video_id": video_id, "category_id": category, "iscrowd": 0,
                "segmentations": [rle if p else None for rle, p in zip(rles, present)],
                "areas": [int(a) if p else None for a, p in zip(areas, present)],
                "bboxes": [[float(v) for v in mask_utils.toBbox(rle)] if p else None
                           for rle, p in zip(rles, present)],
                "height": height, "width": width, "length": num_frames,
            })
            # The tracked prediction: jittered, starting or ending a little off, sometimes mislabeled.
            for copy_index in range(1 + int(rng.random() < 0.3)):
                shift = int(rng.integers(-2, 3))
                p_first = int(np.clip(first + shift, 0, num_frames - 1))
                p_last = int(np.clip(last + int(rng.integers(-2, 3)), p_first, num_frames - 1))
                jitter = rng.normal(0, 1 + 3 * copy_index, size=2)
                scale = rng.uniform(0.8, 1.2, size=2)
                pred_masks = _ellipse_track(rng, num_frames, height, width, p_first, p_last,
                                            center + jitter, velocity, radii * scale)
                label = category if rng.random() < 0.8 else int(rng.integers(1, config.num_categories + 1))
                score = rng.uniform(0.3, 0.95) if copy_index == 0 else rng.uniform(0.05, 0.5)
                pred_tracks.append((pred_masks, label, score))
        for _ in range(int(rng.integers(1, 5))):  # false-positive tracks
            first = int(rng.integers(0, num_frames - 2))
            last = int(rng.integers(first, num_frames))
            pred_masks = _ellipse_track(rng, num_frames, height, width, first, last,
                                        rng.uniform([10, 10], [height - 10, width - 10]),
                                        rng.uniform(-2.0, 2.0, size=2), rng.uniform([4, 4], [40, 60]))
            pred_tracks.append((pred_masks, int(rng.integers(1, config.num_categories + 1)),
                                rng.uniform(0.05, 0.6)))
        num_predictions = int(rng.integers(config.min_predictions, config.max_predictions + 1))
        video_results = []
        per_track = max(1, -(-num_predictions // len(pred_tracks)))
        for pred_masks, label, score in pred_tracks:
            rles = _encode(pred_masks)
            if rng.random() < 0.1:  # some writers leave absent frames null instead of empty
                rles = [rle if pred_masks[:, :, t].any() else None for t, rle in enumerate(rles)]
            other_labels = rng.choice(np.arange(1, config.num_categories + 1), size=min(per_track, config.num_categories),
                                      replace=False)
            labels = [label] + [int(k) for k in other_labels if k != label][: per_track - 1]
            scores = [score] + list(rng.uniform(0.0, 0.08, size=len(labels) - 1))
            for k, s in zip(labels, scores):
                video_results.append({"video_id": video_id, "category_id": int(k),
                                      "score": round(float(s), 3), "segmentations": rles})
        order = rng.permutation(len(video_results))[:num_predictions]
        results.extend(video_results[i] for i in order)
    # Files list results neither in score nor in video order.
    shuffled = rng.permutation(len(results))
    results = [results[i] for i in shuffled]
    ground_truth = {"videos": videos, "categories": categories, "annotations": annotations}
    return ground_truth, results
