"""Tracker sweeps: tracker and post-processing options searched on an output cache, no network.

Each trial re-runs, for every video of the split, the tracker and the post-processing on the cached
network outputs (`predictor.replay_cached`, what `ctvis predict --from-cache` runs), then the official
metrics against the split's annotations: the AP a trial reports is the AP `ctvis predict --from-cache`
gives with the same settings. Trials run in parallel as Tune trials on reused actors (each keeps the
split's ground truth and, up to `MEMO_BYTES`, the decoded cache in memory between trials).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from pipelines import storage

MEMO_BYTES = 4 << 30  # decoded cache kept in a trial actor's memory, at most


class TrackerSweepError(ValueError):
    """The tracker sweep cannot run as configured; the message says why."""


@dataclasses.dataclass
class _Inputs:
    video_ids: list[int]
    category_ids: tuple[int, ...]
    ground_truth: Any  # evaluation.data.GroundTruth
    protocol: str
    videos: dict[int, Any]  # video id -> CachedVideo (memoised while under MEMO_BYTES)
    memo_bytes: int = 0


_INPUTS: dict[tuple[str, str], _Inputs] = {}


def _inputs(cache: str, split: str, benchmark: str) -> _Inputs:
    key = (cache, split)
    if key not in _INPUTS:
        from pipelines.data.catalog import contiguous_index
        from pipelines.data.shards import export_ytvis_json, load_manifest
        from pipelines.evaluation.data import load_ground_truth
        from pipelines.inference.videos import video_refs

        manifest = load_manifest(split)
        video_ids = [ref.video_id for ref in video_refs(manifest)]
        index = contiguous_index(manifest.categories)
        category_ids = tuple(cid for cid, _ in sorted(index.items(), key=lambda item: item[1]))
        ground_truth = load_ground_truth(export_ytvis_json(manifest), name=f"{manifest.split} annotations")
        _INPUTS[key] = _Inputs(video_ids, category_ids, ground_truth, "ovis" if benchmark == "ovis" else "ytvis", {})
    return _INPUTS[key]


def _cached_video(inputs: _Inputs, cache: str, video_id: int) -> Any:
    from pipelines.inference.cache import read_cached_video, video_cache_uri

    video = inputs.videos.get(video_id)
    if video is None:
        video = read_cached_video(video_cache_uri(cache, video_id))
        size = sum(clip.masks.numel() * 4 + clip.logits.numel() * 4 + clip.embeds.numel() * 4 for clip in video.clips)
        if inputs.memo_bytes + size <= MEMO_BYTES:
            inputs.videos[video_id] = video
            inputs.memo_bytes += size
    return video


def evaluate_tracker_settings(cache: str, split: str, overrides: list[str], benchmark: str = "ytvis") -> dict[str, float]:
    """The official metrics (x100) of the cached split with the tracker / post-processing `overrides`
    on top of the cache's model config."""
    from pipelines.evaluation.data import predictions_from_list
    from pipelines.evaluation.suites import run_evaluation
    from pipelines.inference.model_source import model_from_cache
    from pipelines.inference.predictor import replay_cached

    config = model_from_cache(cache, overrides).experiment.model
    inputs = _inputs(cache, split, benchmark)
    results: list[dict] = []
    for video_id in inputs.video_ids:
        results += replay_cached(config, _cached_video(inputs, cache, video_id), inputs.category_ids).results
    evaluation = run_evaluation(inputs.protocol, predictions_from_list(results, "<tracker trial>"),
                                gt=inputs.ground_truth).main
    return {name: 100.0 * value if value >= 0 else value for name, value in evaluation.stats_by_name.items()}


def tracker_trial(config: dict[str, Any], cache: str, split: str, fixed: tuple[str, ...], benchmark: str) -> None:
    """Tune function trainable: one set of tracker settings -> its metrics."""
    import torch
    from ray import tune

    from pipelines.tune.config import trial_overrides

    torch.set_num_threads(1)
    started = time.perf_counter()
    metrics = evaluate_tracker_settings(cache, split, list(fixed) + trial_overrides(config), benchmark)
    tune.report({**metrics, "trial_s": time.perf_counter() - started})


def check_cache(sweep: Any) -> Any:
    """The cache's model (with the sweep's fixed overrides); the cache must hold every video of the
    split, which must be annotated."""
    from pipelines.data.shards import load_manifest
    from pipelines.inference.cache import CACHE_MANIFEST, read_cache_manifest, video_cache_uri
    from pipelines.inference.job import split_fingerprint
    from pipelines.inference.model_source import model_from_cache
    from pipelines.tune.config import check_keys

    info = read_cache_manifest(sweep.cache)
    manifest = load_manifest(sweep.split)
    if info.get("split_fingerprint") != split_fingerprint(manifest):
        raise TrackerSweepError(f"{storage.redact(sweep.cache)} was made from another split ({info.get('split')}), "
                                f"not {storage.redact(sweep.split)}")
    if int(manifest.raw.get("num_instances", 0)) == 0:
        raise TrackerSweepError(f"{storage.redact(sweep.split)}: the split has no annotations to score trials with")
    try:  # one listing, not one request per video
        cached = set(storage.ls(storage.join(sweep.cache, "videos")))
    except storage.StorageNotFound:
        cached = set()
    missing = [int(v) for v in manifest.video_ids if video_cache_uri(sweep.cache, int(v)) not in cached]
    if missing:
        raise TrackerSweepError(f"{storage.redact(sweep.cache)}: {len(missing)} videos of the split are not cached "
                                f"(e.g. {missing[:5]}): finish the ctvis predict --cache-outputs run first")
    source = storage.redact(storage.join(sweep.cache, CACHE_MANIFEST))
    check_keys(sweep, lambda overrides: model_from_cache(sweep.cache, overrides), source)
    return model_from_cache(sweep.cache, list(sweep.overrides))


def tracker_trainable(sweep: Any) -> Any:
    from ray import tune

    trainable = tune.with_parameters(tracker_trial, cache=sweep.cache, split=sweep.split, fixed=tuple(sweep.overrides),
                                     benchmark=sweep.benchmark)
    resources = {"cpu": sweep.trial_resources.cpus, "gpu": sweep.trial_resources.gpus}
    return tune.with_resources(trainable, resources)

