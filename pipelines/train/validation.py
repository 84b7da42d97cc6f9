"""Validation during and after training: inference on an ingested split, official metrics.

The validation split is read from its Parquet shards (``data.val.shards``, as `ctvis data ingest`
writes them): frames are decoded and resized as detectron2's test mapper does
(`ResizeShortestEdge(min_size_test, max_size_test)`, bilinear), the model runs online over each
whole video (`CTVISModel.infer_video`), and the predictions at the original resolution become the
official results JSON (`evaluation.writer.video_results`), scored by the official YTVIS / OVIS
metrics (`evaluation.suites.run_evaluation`) against the split's own annotations exported
from the shards. Metrics are reported x100 (as papers), prefixed ``val/``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import torch

from pipelines.data.augment import decode_image, shortest_edge_size
from pipelines.data.catalog import contiguous_index
from pipelines.data.shards import Manifest, ShardReader, export_ytvis_json, load_manifest


@dataclasses.dataclass
class ValidationVideo:
    video_id: int
    frames: np.ndarray  # uint8 (T,3,h,w) resized to the test size
    original_size: tuple[int, int]  # (H, W) the results are written at
    encoded_frames: list[bytes]  # the published frame files (decoded again only to draw overlays)

    def original_frames(self) -> np.ndarray:
        """uint8 (T,H,W,3) at the original resolution."""
        return np.stack([np.asarray(decode_image(data)) for data in self.encoded_frames])


@dataclasses.dataclass
class ValidationSet:
    name: str
    videos: list[ValidationVideo]
    ground_truth: dict  # YouTube-VIS JSON of exactly these videos
    category_ids: list[int]  # contiguous model label -> dataset category id
    category_names: list[str]  # contiguous model label -> category name


@dataclasses.dataclass
class ValidationOutcome:
    metrics: dict[str, float]  # "val/AP", "val/AP50", ... (x100)
    results: list[dict]  # official results entries
    predictions: dict[int, Any]  # video id -> VideoInstances (for visualisation)
    table: str  # the printed AP table


def _resize_frame(image, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if (image.height, image.width) != (h, w):
        image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def load_validation_set(spec: Any, data_config: Any, max_videos: Optional[int] = None) -> ValidationSet:
    """The first `max_videos` videos (all by default) of the ingested split `spec` (a DatasetSpec)."""
    if not spec.shards:
        raise ValueError(f"data.val ({spec.name}): no `shards` URI; ingest the split with `ctvis data ingest` and "
                         "set data.val.shards")
    manifest: Manifest = load_manifest(spec.shards)
    if manifest.kind != "video":
        raise ValueError(f"data.val ({spec.name}): {manifest.uri} holds images, not videos")
    count = manifest.num_videos if max_videos is None else min(max_videos, manifest.num_videos)
    reader = ShardReader(columns=["video_id", "height", "width", "frames"])
    videos = []
    for v in range(count):
        row = reader.read(manifest.shard_uri(int(manifest.shard_index[v])), int(manifest.row_index[v]))
        height, width = int(row["height"]), int(row["width"])
        size = shortest_edge_size(height, width, data_config.min_size_test, data_config.max_size_test)
        frames = np.stack([_resize_frame(decode_image(data), size) for data in row["frames"]])
        videos.append(ValidationVideo(int(row["video_id"]), frames, (height, width), list(row["frames"])))
    ground_truth = export_ytvis_json(manifest)
    keep = {v.video_id for v in videos}
    ground_truth["videos"] = [v for v in ground_truth["videos"] if v["id"] in keep]
    ground_truth["annotations"] = [a for a in ground_truth["annotations"] if a["video_id"] in keep]
    index = contiguous_index(manifest.categories)  # category id -> contiguous label
    category_ids = [cid for cid, _ in sorted(index.items(), key=lambda item: item[1])]
    names = {c.id: c.name for c in manifest.categories}
    return ValidationSet(spec.name, videos, ground_truth, category_ids, [names[c] for c in category_ids])


@torch.no_grad()
def predict(model: Any, videos: Sequence[ValidationVideo], device: torch.device) -> dict[int, Any]:
    """video id -> `VideoInstances` (CPU tensors) of `model` (the unwrapped CTVIS model)."""
    was_training = model.training
    model.eval()
    try:
        out = {}
        for video in videos:
            frames = torch.from_numpy(video.frames).to(device)
            instances = model.infer_video(frames, output_size=video.original_size)
            out[video.video_id] = instances
        return out
    finally:
        model.train(was_training)


def evaluate_predictions(predictions: dict[int, Any], val_set: ValidationSet, benchmark: str) -> ValidationOutcome:
    """Official metrics of `predictions` on `val_set` (ytvis or ovis)."""
    from pipelines.evaluation.suites import run_evaluation
    from pipelines.evaluation.command import _format_table
    from pipelines.evaluation.data import load_ground_truth, predictions_from_list
    from pipelines.evaluation.writer import video_results

    if benchmark not in ("ytvis", "ovis"):
        raise ValueError(f"eval.benchmark: validation during training supports ytvis and ovis, got {benchmark!r}")
    results: list[dict] = []
    for video in val_set.videos:
        instances = predictions[video.video_id]
        results.extend(video_results(video.video_id, instances.scores.float().cpu().numpy(),
                                     instances.labels.cpu().numpy(), instances.masks.cpu().numpy(),
                                     val_set.category_ids))
    report = run_evaluation(benchmark, predictions_from_list(results, f"<validation {val_set.name}>"),
                            gt=load_ground_truth(val_set.ground_truth))
    evaluation = report.main
    metrics = {f"val/{name}": 100.0 * value if value >= 0 else value
               for name, value in evaluation.stats_by_name.items()}
    table = _format_table(f"{benchmark} validation on {val_set.name} ({len(val_set.videos)} videos)",
                          evaluation.stat_names, evaluation.stats)
    return ValidationOutcome(metrics, results, predictions, table)


def overlay_png(video: ValidationVideo, instances: Any, val_set: ValidationSet, max_frames: int = 8,
                min_score: float = 0.3) -> bytes:
    """The video's frames with its predicted instances scoring >= `min_score` (coloured by track)
    as one PNG strip."""
    from pipelines.train.visualize import overlay_strip

    scores = instances.scores.float().cpu().numpy()
    keep = np.flatnonzero(scores >= min_score)
    labels = instances.labels.cpu().numpy()[keep]
    return overlay_strip(video.original_frames(), instances.masks.cpu().numpy()[keep],
                         instances.mask_index.cpu().numpy()[keep], scores[keep],
                         [val_set.category_names[int(k)] for k in labels], max_frames=max_frames)


def validate(model: Any, val_set: ValidationSet, benchmark: str, device: torch.device) -> ValidationOutcome:
    return evaluate_predictions(predict(model, val_set.videos, device), val_set, benchmark)
