"""Ray Tune sweeps (issue: sweeps): the sweep YAML is validated strictly; a tracker sweep on an output
cache finds settings at least as good as the base ones and reports the AP `ctvis predict --from-cache`
gives with them; a training-time sweep stops trials early with ASHA, nests its trials' MLflow runs,
registers the best model, and resumes after its driver is killed without running a trial twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models.frame_outputs import FrameOutputs
from pipelines import storage
from pipelines.config import ConfigError, load_experiment
from pipelines.data.catalog import contiguous_index
from pipelines.data.shards import export_ytvis_json, load_manifest
from pipelines.inference.cache import OutputRecorder, video_cache_uri, write_cache_manifest
from pipelines.inference.job import PredictOptions, _split_fingerprint, predict_split
from pipelines.inference.model_source import model_from_cache
from pipelines.tune.config import load_sweep
from tests import services
from tests.conftest import PROJECT_ROOT
from tests.test_predict import _split

TINY = PROJECT_ROOT / "experiments" / "tiny.yaml"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sweep_files_are_validated_strictly(tmp_path):
    for shipped in sorted((PROJECT_ROOT / "experiments" / "sweeps").glob("*.yaml")):
        sweep, _ = load_sweep(shipped)
        assert sweep.name == shipped.stem and sweep.search_space
    bad = _write(tmp_path / "bad.yaml", "name: s\nkind: training\nbase: x.yaml\nsearch_space:\n"
                                        "  model.ctcl.reid_weight: {loguniform: [0, 1]}\nnum_sampels: 3\n")
    with pytest.raises(ConfigError, match=r"num_sampels: unknown key \(did you mean 'num_samples'\?\)"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match=r"search_space.model.ctcl.reid_weight: Value error, loguniform: needs low > 0"):
        load_sweep(_write(tmp_path / "b2.yaml", bad.read_text().replace("num_sampels: 3\n", "")))
    tracker = _write(tmp_path / "t.yaml", "name: t\nkind: tracker\ncache: c\nsplit: s\nsearch_space:\n"
                                          "  model.ctcl.reid_weight: {choice: [1.0]}\n")
    with pytest.raises(ConfigError, match="a tracker sweep can only search what runs after the network"):
        load_sweep(tracker)


def _ground_truth_cache(split: str, cache: str, seed: int = 0) -> None:
    """An output cache made from the split's own annotations, with noise: what a decent network would
    output (each instance on its own query, with a class score, a low-resolution mask and a re-id
    embedding), so that tracker settings make a measurable difference."""
    rng = np.random.default_rng(seed)
    experiment = load_experiment(TINY, ["data.min_size_test=64", "data.max_size_test=96"])
    manifest = load_manifest(split)
    label = contiguous_index(manifest.categories)
    gt = export_ytvis_json(manifest)
    queries, embed_dim = 16, 8
    for video in gt["videos"]:
        height, width, length = video["height"], video["width"], video["length"]
        mask_h, mask_w = height // 4, width // 4
        logits = np.zeros((length, queries, len(label) + 1), np.float32)
        logits[:, :, -1] = 4.0                                             # no object
        masks = np.full((length, queries, mask_h, mask_w), -6.0, np.float32)
        embeds = rng.normal(size=(length, queries, embed_dim)).astype(np.float32)
        instances = [a for a in gt["annotations"] if a["video_id"] == video["id"]]
        for query, annotation in enumerate(instances):
            identity = rng.normal(size=embed_dim) * 3
            for frame, segmentation in enumerate(annotation["segmentations"]):
                if segmentation is None:
                    continue
                full = mask_utils.decode(segmentation).astype(np.float32)
                low = full.reshape(mask_h, 4, mask_w, 4).mean(axis=(1, 3))
                masks[frame, query] = 10 * (low - 0.5) + rng.normal(scale=2.0, size=low.shape)
                logits[frame, query, label[annotation["category_id"]]] = 3.0 + rng.normal()
                logits[frame, query, -1] = 0.0
                embeds[frame, query] = identity + rng.normal(scale=1.5, size=embed_dim)
        recorder = OutputRecorder()
        for start in range(0, length, 5):
            clip = slice(start, start + 5)
            recorder(FrameOutputs(torch.from_numpy(logits[clip]), torch.from_numpy(masks[clip]),
                                  torch.zeros(0), torch.from_numpy(embeds[clip])))
        storage.write_bytes(video_cache_uri(cache, video["id"]),
                            recorder.encode(video["id"], (height, width), (height, width), (height, width)))
    write_cache_manifest(cache, {"experiment": experiment.to_yaml(), "weights": "ground truth + noise",
                                 "model": "a synthetic cache", "split": split,
                                 "split_fingerprint": _split_fingerprint(manifest), "mask_dtype": "float16"})


@pytest.mark.integration
def test_a_tracker_sweep_finds_settings_predict_confirms(ray_local, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.tune.sweep import run_sweep

    split = _split(str(tmp_path / "data"), videos=4, seed=8)
    cache = str(tmp_path / "cache")
    _ground_truth_cache(split, cache)
    sweep_file = _write(tmp_path / "sweep.yaml", f"""
name: tracker_test
kind: tracker
cache: {cache}
split: {split}
search_space:
  model.tracker.match_score_thr: {{grid: [0.3, 0.9]}}
  model.tracker.embed_type: {{choice: [similarity_guided, last]}}
  model.inference.num_topk: {{choice: [3, 10]}}
include_base: true
num_samples: 2
max_concurrent_trials: 2
storage_root: {tmp_path / 'sweeps'}
""")
    sweep, directory = load_sweep(sweep_file)
    summary = run_sweep(sweep, directory, log=lambda line: None, tracking_uri=mlflow_server.tracking_uri)
    assert len(summary.trials) == 1 + 2 * 2 and all(row["status"] == "finished" for row in summary.trials)
    base = next(row for row in summary.trials if row["model.tracker.match_score_thr"] == 0.3
                and row["model.tracker.embed_type"] == "similarity_guided" and row["model.inference.num_topk"] == 10)
    scores = sorted(row["AP"] for row in summary.trials)
    assert summary.best["AP"] == scores[-1] >= base["AP"] and scores[0] < scores[-1]    # the settings matter

    best_overrides = summary.best_overrides.split(" ")
    confirm = predict_split(model_from_cache(cache, best_overrides), split,
                            PredictOptions(output=str(tmp_path / "confirm"), from_cache=cache, overlays=0,
                                           tracking_uri=mlflow_server.tracking_uri), log=lambda line: None)
    assert confirm.metrics["AP"] == pytest.approx(summary.best["AP"], abs=1e-9)

    client = MlflowClient(mlflow_server.tracking_uri)
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.data.tags["sweep.best_overrides"] == summary.best_overrides
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/plots.png", "sweep/best_overrides.txt"} <= artifacts
    table = Path(client.download_artifacts(summary.mlflow_run_id, "sweep/trials.csv")).read_text().splitlines()
    assert len(table) == 1 + 5 and table[0].startswith("trial_id,status,reports,model.tracker.match_score_thr")
