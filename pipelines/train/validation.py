"""Validation during and after training: the model over an ingested split, official metrics.

The videos of ``data.val.shards`` are decoded once (`pipelines.inference.videos`, as `ctvis predict`
reads them) and kept for every validation of the run; each validation runs the model over them with
`pipelines.inference.predictor.VideoPredictor`, the path `ctvis predict` runs in its Ray Data
actors, so both give the same results for the same weights. The results are scored by the official
YTVIS / OVIS metrics (`evaluation.suites.run_evaluation`) against the split's own annotations
exported from the shards. Metrics are reported x100 (as papers), prefixed ``val/``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import torch

from pipelines.data.catalog import contiguous_index
from pipelines.data.shards import Manifest, ShardReader, export_ytvis_json, load_manifest
from pipelines.inference.predictor import VideoPrediction, VideoPredictor
from pipelines.inference.videos import TestVideo, read_test_video, video_refs


@dataclasses.dataclass
class ValidationSet:
    name: str
    videos: list[TestVideo]
    ground_truth: dict  # YouTube-VIS JSON of exactly these videos
    category_ids: list[int]  # contiguous model label -> dataset category id
    category_names: list[str]  # contiguous model label -> category name


@dataclasses.dataclass
class ValidationOutcome:
    metrics: dict[str, float]  # "val/AP", "val/AP50", ... (x100)
    results: list[dict]  # official results entries
    predictions: dict[int, VideoPrediction]  # video id -> prediction (for visualisation)
    table: str  # the printed AP table


def load_validation_set(spec: Any, data_config: Any, max_videos: Optional[int] = None) -> ValidationSet:
    """The first `max_videos` videos (all by default) of the ingested split `spec` (a DatasetSpec)."""
    if not spec.shards:
        raise ValueError(f"data.val ({spec.name}): no `shards` URI; ingest the split with `ctvis data ingest` and "
                         "set data.val.shards")
    manifest: Manifest = load_manifest(spec.shards)
    if manifest.kind != "video":
        raise ValueError(f"data.val ({spec.name}): {manifest.uri} holds images, not videos")
    reader = ShardReader(columns=["video_id", "height", "width", "frames"])
    videos = [read_test_video(reader, ref, data_config.min_size_test, data_config.max_size_test)
              for ref in video_refs(manifest, max_videos)]
    ground_truth = export_ytvis_json(manifest)
    keep = {v.video_id for v in videos}
    ground_truth["videos"] = [v for v in ground_truth["videos"] if v["id"] in keep]
    ground_truth["annotations"] = [a for a in ground_truth["annotations"] if a["video_id"] in keep]
    index = contiguous_index(manifest.categories)  # category id -> contiguous label
    category_ids = [cid for cid, _ in sorted(index.items(), key=lambda item: item[1])]
    names = {c.id: c.name for c in manifest.categories}
    return ValidationSet(spec.name, videos, ground_truth, category_ids, [names[c] for c in category_ids])


def validate(model: Any, val_set: ValidationSet, benchmark: str, device: torch.device) -> ValidationOutcome:
    """Official metrics of `model` (the unwrapped CTVIS model) on `val_set` (ytvis or ovis)."""
    from pipelines.evaluation.command import _format_table
    from pipelines.evaluation.data import load_ground_truth, predictions_from_list
    from pipelines.evaluation.suites import run_evaluation

    if benchmark not in ("ytvis", "ovis"):
        raise ValueError(f"eval.benchmark: validation during training supports ytvis and ovis, got {benchmark!r}")
    predictor = VideoPredictor(model, val_set.category_ids, device)  # infer_video restores train mode
    predictions = {video.video_id: predictor.predict(video) for video in val_set.videos}
    results = [entry for video in val_set.videos for entry in predictions[video.video_id].results]
    report = run_evaluation(benchmark, predictions_from_list(results, f"<validation {val_set.name}>"),
                            gt=load_ground_truth(val_set.ground_truth))
    evaluation = report.main
    metrics = {f"val/{name}": 100.0 * value if value >= 0 else value
               for name, value in evaluation.stats_by_name.items()}
    table = _format_table(f"{benchmark} validation on {val_set.name} ({len(val_set.videos)} videos)",
                          evaluation.stat_names, evaluation.stats)
    return ValidationOutcome(metrics, results, predictions, table)


def overlay_png(video: TestVideo, prediction: VideoPrediction, val_set: ValidationSet, max_frames: int = 8,
                min_score: float = 0.3) -> bytes:
    """The video's frames with its predicted instances scoring >= `min_score` (coloured by track)
    as one PNG strip."""
    from pipelines.train.visualize import overlay_strip

    instances = prediction.instances
    scores = instances.scores.float().cpu().numpy()
    keep = np.flatnonzero(scores >= min_score)
    labels = instances.labels.cpu().numpy()[keep]
    return overlay_strip(video.original_frames(), instances.masks.cpu().numpy()[keep],
                         instances.mask_index.cpu().numpy()[keep], scores[keep],
                         [val_set.category_names[int(k)] for k in labels], max_frames=max_frames)
