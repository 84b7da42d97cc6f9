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
from pipelines.inference.job import PredictOptions, predict_split, split_fingerprint
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
                                 "split_fingerprint": split_fingerprint(manifest), "mask_dtype": "float16"})


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


def _finished_trial_runs(client, experiment_name: str, sweep: str) -> set[str]:
    """Ray Train run names of the sweep's trials whose MLflow run has finished."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return set()
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    return {run.data.tags.get("ray_run_name", "") for run in runs
            if run.data.tags.get("ray_run_name", "").startswith(f"{sweep}-")}


@pytest.mark.integration
@pytest.mark.slow
def test_a_training_sweep_stops_trials_early_and_resumes_after_its_driver_is_killed(s3_server, s3_bucket,
                                                                                  mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.test_train_integration import make_synthetic_shards

    train, val = make_synthetic_shards(f"s3://{s3_bucket}/data")
    runs_root = f"s3://{s3_bucket}/runs"
    overrides = [
        f"data.train=[{{name: synth_train, shards: '{train}'}}]", f"data.val={{name: synth_val, shards: '{val}'}}",
        "data.sampling_frame_num=2", "data.sampling_frame_range=3", "data.min_size_train=[64]",
        "data.max_size_train=96", "data.crop.enabled=false", "data.min_size_test=64", "data.max_size_test=96",
        "train.batch_size=2", "train.schedule={max_iter: 6, steps: [5], warmup_iters: 0}", "train.eval_period=2",
        "train.log_period=1", "eval.max_videos=1", "eval.visualize_videos=0", "compute.num_workers=1",
        "compute.cpus_per_worker=0.5", "compute.cpus_per_decoder=0.25", f"storage.runs_root={runs_root}"]
    sweep_file = _write(tmp_path / "ctcl.yaml", "\n".join([
        "name: ctcl_test", "kind: training", f"base: {TINY}", "overrides:",
        *[f"  - {json.dumps(text)}" for text in overrides],
        "search_space:", "  model.ctcl.reid_weight: {loguniform: [0.5, 4.0]}",
        "  model.criterion.dice_weight: {uniform: [1.0, 8.0]}",
        # The loss differs from trial to trial from the first report on (a 6-step AP is 0 everywhere).
        "metric: loss", "mode: min", "scheduler: {type: asha, grace_period: 1, reduction_factor: 2}",
        "num_samples: 4", "max_concurrent_trials: 1", "seed: 3", f"storage_root: s3://{s3_bucket}/sweeps", ""]))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **services.ray_loopback_env(home)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pipelines.cli", "tune", str(sweep_file), "--tracking-uri",
               mlflow_server.tracking_uri]
    client = MlflowClient(mlflow_server.tracking_uri)
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "first.log", "w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _finished_trial_runs(client, "tiny", "ctcl_test"):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished within 300 s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)          # the driver and the Ray it started
        first.wait(timeout=30)
    done_before_kill = _finished_trial_runs(client, "tiny", "ctcl_test")
    assert len(done_before_kill) < 4

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                            start_new_session=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "restoring the Tune experiment" in second.stderr and "resuming sweep ctcl_test" in second.stderr
    lines = second.stdout.splitlines()
    summary = next(line for line in lines if line.startswith("sweep ctcl_test"))
    assert summary.startswith("sweep ctcl_test (training): 4 trials") and "0 failed" in summary
    assert " 0 stopped early" not in summary, second.stdout                  # ASHA stopped at least one

    parent_id = next(line for line in lines if line.startswith("MLflow parent run")).split()[3]
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 4                                                 # one nested run per trial
    for child in children:
        run_name = child.data.tags["ray_run_name"]
        info = storage.read_json(f"{runs_root}/{run_name}/ctvis_run.json")
        assert float(child.data.params["model.ctcl.reid_weight"]) > 0
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss_total")]
        if run_name in done_before_kill:                                      # finished before the kill:
            assert sorted(steps) == list(range(1, 7)) and info["driver_starts"] == 1   # not run again
        if child.data.tags.get("sweep.status") == "stopped early":
            # Its Ray Train run never finished. (Its workers may log a step or two past the report
            # ASHA stopped it at: reports reach Tune asynchronously.)
            assert child.info.status == "KILLED" and not info.get("finished")
        else:
            assert child.info.status == "FINISHED" and info["finished"]
    assert any(child.data.tags.get("sweep.status") == "stopped early" for child in children)
    # A stopped trial's workers went with it: on these 2 CPUs the trials after it could not have
    # started otherwise (a stopped trial whose placement group was never released made the resumed
    # sweep wait forever, before ray_runtime.connect set RAY_ADDRESS for its cluster).
    assert sum(child.info.status == "FINISHED" for child in children) >= 1

    best = client.get_model_version_by_alias("ctcl_test", "best")
    best_run = client.get_run(best.run_id)
    assert best_run.data.tags["mlflow.parentRunId"] == parent_id and best_run.info.status == "FINISHED"
    best_yaml = Path(client.download_artifacts(parent_id, "sweep/best_experiment.yaml", str(tmp_path)))
    reproduced = load_experiment(best_yaml)                                   # what ctvis train takes
    assert reproduced.model.ctcl.reid_weight == pytest.approx(float(best_run.data.params["model.ctcl.reid_weight"]))
    assert reproduced.tracking.parent_run_id is None and reproduced.train.run_name is None
