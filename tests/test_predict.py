"""`ctvis predict` (issue: inference at scale): a model over a split on Ray Data actors gives the
in-process results exactly; the output cache replays them exactly; a killed job resumes; the zip has
the CodaLab layout; registry URIs resolve; a split without annotations gives results and no metrics;
bad input is named before or while working, never silently."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.model import build_model
from pipelines import storage
from pipelines.config import load_experiment
from pipelines.data import catalog, synth
from pipelines.data.ingest import IngestOptions, ingest
from pipelines.inference.job import PredictError, PredictOptions, predict_split
from pipelines.inference.model_source import model_from_cache, resolve_model
from pipelines.train.validation import load_validation_set, validate
from pipelines.weights import WeightsError, load_weights
from tests import services
from tests.conftest import PROJECT_ROOT
from tests.test_train_integration import make_synthetic_shards

TINY = PROJECT_ROOT / "experiments" / "tiny.yaml"
TEST_SIZES = ["data.min_size_test=64", "data.max_size_test=96"]


def _model(weights: Path, *overrides: str):
    return resolve_model(str(TINY), [f"model.weights={weights}", *TEST_SIZES, *overrides])


def _split(root: str, videos: int, annotated: bool = True, seed: int = 21) -> str:
    raw = synth.generate(f"{root}/raw", synth.SynthConfig(num_videos=videos, min_frames=4, max_frames=6, height=64,
                                                          width=64, num_classes=3, seed=seed))
    if not annotated:  # a test split: videos and categories, no annotations
        data = json.loads(storage.read_bytes(raw["annotations"]))
        data["annotations"] = None
        storage.write_bytes(raw["annotations"], json.dumps(data).encode())
    info = catalog.resolve_split("synth_test", annotations=raw["annotations"], frames_root=raw["frames_root"])
    ingest(info, f"{root}/shards", IngestOptions(executor="local"))
    return f"{root}/shards"


def _in_process(model, split: str, max_videos: int | None = None):
    """The validation path of `ctvis train`: the same weights, in this process, no Ray, on one thread
    like the actors (--cpus-per-worker 1): CPU kernels sum in another order on another number of
    threads, which moves the last bit of some scores."""
    network = build_model(model.experiment.model)
    load_weights(network, model.weights)
    val_set = load_validation_set(types.SimpleNamespace(name="split", shards=split), model.experiment.data,
                                  max_videos)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return validate(network, val_set, "ytvis", torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)


def in_process_results(model, split: str, max_videos: int | None = None) -> list[dict]:
    return _in_process(model, split, max_videos).results


@pytest.mark.integration
def test_two_ray_workers_give_the_in_process_results_and_the_cache_replays_them(ray_local, s3_bucket, mlflow_server,
                                                                                 tiny_weights):
    split, _ = make_synthetic_shards(f"s3://{s3_bucket}/data")
    model = _model(tiny_weights)
    lines: list[str] = []
    options = PredictOptions(output=f"s3://{s3_bucket}/predict", workers=2, overlays=1,
                             tracking_uri=mlflow_server.tracking_uri)
    summary = predict_split(model, split, options, log=lines.append)
    assert summary.num_videos == 4 and summary.predicted == 4 and summary.reused == 0 and not summary.failed

    expected = _in_process(model, split)
    results = json.loads(storage.read_bytes(f"{options.output}/results.json"))
    assert results == expected.results and len(results) == 4 * 10          # top-10 per video
    assert summary.metrics == {name[len("val/"):]: value for name, value in expected.metrics.items()}
    metrics = json.loads(storage.read_bytes(f"{options.output}/metrics.json"))
    assert metrics["stats"]["AP"] * 100 == pytest.approx(summary.metrics["AP"]) and metrics["failed_videos"] == []
    assert storage.read_text(f"{options.output}/table.txt").startswith("ytvis on synth_train (4 videos)")
    with zipfile.ZipFile(io.BytesIO(storage.read_bytes(f"{options.output}/submission.zip"))) as archive:
        assert archive.namelist() == ["results.json"]                       # the CodaLab layout
        assert json.loads(archive.read("results.json")) == results

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.tags["ctvis.job"] == "predict" and run.data.params["split"] == split
    assert run.data.params["model.tracker.match_score_thr"] == "0.3"
    assert run.data.metrics["AP"] == pytest.approx(summary.metrics["AP"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "predict")}
    assert {"predict/results.json", "predict/metrics.json", "predict/table.txt", "predict/overlays"} <= artifacts

    # With an output cache, then only the tracker and post-processing again from it: the same bytes.
    cache = f"s3://{s3_bucket}/cache"
    cached = dataclasses.replace(options, output=f"s3://{s3_bucket}/predict-cached", cache_outputs=cache, overlays=0)
    predict_split(model, split, cached, log=lines.append)
    replayed = dataclasses.replace(options, output=f"s3://{s3_bucket}/predict-replayed", from_cache=cache,
                                   workers=1, overlays=0)
    replay = predict_split(model_from_cache(cache), split, replayed, log=lines.append)
    assert storage.read_bytes(f"{replayed.output}/results.json") == storage.read_bytes(f"{cached.output}/results.json")
    assert replay.metrics == {name: 100 * value if value >= 0 else value for name, value in
                              json.loads(storage.read_bytes(f"{cached.output}/metrics.json"))["stats"].items()}
    assert len(storage.ls(f"{cache}/videos")) == 4
    # Another tracker option on the same cache changes the results (the options do reach the tracker).
    stricter = dataclasses.replace(replayed, output=f"s3://{s3_bucket}/predict-strict")
    predict_split(model_from_cache(cache, ["model.inference.num_topk=3"]), split, stricter, log=lines.append)
    assert len(json.loads(storage.read_bytes(f"{stricter.output}/results.json"))) == 4 * 3


@pytest.mark.integration
def test_a_killed_job_run_again_finishes_with_the_same_results(tiny_weights, tmp_path):
    split = _split(str(tmp_path / "data"), videos=8)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **services.ray_loopback_env(home)}
    env.pop("RAY_ADDRESS", None)
    output = tmp_path / "predict"
    command = [sys.executable, "-m", "pipelines.cli", "predict", str(TINY), split, f"model.weights={tiny_weights}",
               *TEST_SIZES, "--output", str(output), "--workers", "1", "--overlays", "0",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    parts = output / "parts"
    try:
        deadline = time.monotonic() + 240
        while not (parts.is_dir() and len(list(parts.glob("*.json"))) >= 2):
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no video done within 240 s"
            time.sleep(0.05)
    finally:
        services.kill_tree(first)  # the driver and the Ray it started (an actor left alive could finish a video)
        first.stderr.close()
    done_before = len(list(parts.glob("*.json")))
    assert 2 <= done_before < 8 and not (output / "results.json").exists()

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"8 videos of synth_test, {done_before} already done, {8 - done_before} to run" in second.stderr
    assert f"{done_before} reused" in second.stdout
    expected = _in_process(_model(tiny_weights), split)
    assert json.loads((output / "results.json").read_text()) == expected.results


@pytest.mark.integration
def test_a_registered_model_over_a_split_without_annotations(ray_local, mlflow_server, tiny_weights, tmp_path):
    from pipelines.mlflow_runs import MlflowRun

    experiment = load_experiment(TINY, TEST_SIZES)
    registered = tmp_path / "model"
    registered.mkdir()
    (registered / "model.pt").write_bytes(tiny_weights.read_bytes())
    (registered / "config.yaml").write_text(experiment.to_yaml())
    mlflow_run = MlflowRun(mlflow_server.tracking_uri)
    mlflow_run.start("predict-registry", run_name="register")
    mlflow_run.log_artifact(registered, "model")
    version = mlflow_run.register_model("predict-tiny", "model", aliases=["champion"])
    mlflow_run.end()

    model = resolve_model("models:/predict-tiny@champion", [], mlflow_server.tracking_uri)
    assert model.weights.location == f"models:/predict-tiny/{version.version}"
    assert model.experiment.data.min_size_test == 64                       # the registered config
    split = _split(str(tmp_path / "test-split"), videos=2, annotated=False, seed=5)
    output = tmp_path / "predict"
    summary = predict_split(model, split, PredictOptions(output=str(output), overlays=1,
                                                         tracking_uri=mlflow_server.tracking_uri), log=lambda line: None)
    assert summary.metrics is None and summary.table is None and not (output / "table.txt").exists()
    metrics = json.loads((output / "metrics.json").read_text())
    assert "stats" not in metrics and metrics["videos_with_results"] == 2
    results = json.loads((output / "results.json").read_text())
    assert len(results) == 20 and {r["video_id"] for r in results} == set(
        storage.read_json(f"{split}/manifest.json")["video_index"]["video_id"])
    with zipfile.ZipFile(output / "submission.zip") as archive:
        assert archive.namelist() == ["results.json"] and json.loads(archive.read("results.json")) == results

    with pytest.raises(WeightsError) as missing:
        resolve_model("models:/no-such-model@champion", [], mlflow_server.tracking_uri)
    assert "no-such-model" in str(missing.value) and "127.0.0.1" in str(missing.value)


def _corrupt_frame(split: str, video_index: int, frame: int) -> int:
    """Replace one frame of the split's `video_index`-th video with bytes no decoder reads."""
    import pyarrow.parquet as pq

    from pipelines.data.shards import encode_table, load_manifest

    manifest = load_manifest(split)
    shard = manifest.shard_uri(int(manifest.shard_index[video_index]))
    rows = pq.read_table(shard).to_pylist()
    rows[int(manifest.row_index[video_index])]["frames"][frame] = b"\xff\xd8 not a jpeg"
    Path(shard).write_bytes(encode_table(rows))
    return int(manifest.video_ids[video_index])


@pytest.mark.integration
def test_bad_input_is_named_before_or_while_working(ray_local, tiny_weights, tmp_path):
    split = _split(str(tmp_path / "data"), videos=3)
    # A model of another dataset: an error before anything runs or is written.
    other = _model(tiny_weights, "model.network.num_classes=5")
    with pytest.raises(PredictError, match=r"predicts 5 classes but the split synth_test .* has 3 categories"):
        predict_split(other, split, PredictOptions(output=str(tmp_path / "other")), log=lambda line: None)
    assert not (tmp_path / "other").exists()

    broken = _corrupt_frame(split, 1, 2)
    model = _model(tiny_weights)
    options = PredictOptions(output=str(tmp_path / "predict"), overlays=0, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(PredictError, match=rf"video {broken} frame 2 \(.*\): cannot decode the frame"):
        predict_split(model, split, options, log=lambda line: None)
    skipped = predict_split(model, split, dataclasses.replace(options, on_error="skip"), log=lambda line: None)
    assert [failure["video_id"] for failure in skipped.failed] == [broken] and skipped.failed[0]["frame"] == 2
    metrics = json.loads((tmp_path / "predict" / "metrics.json").read_text())
    assert metrics["failed_videos"][0]["video_id"] == broken and metrics["videos_with_results"] == 2
    assert {r["video_id"] for r in json.loads((tmp_path / "predict" / "results.json").read_text())} == set(
        np.delete(storage.read_json(f"{split}/manifest.json")["video_index"]["video_id"], 1).tolist())

    with pytest.raises(PredictError, match="holds the results of another job"):
        predict_split(_model(tiny_weights, "model.tracker.match_score_thr=0.5"), split,
                      dataclasses.replace(options, on_error="skip"), log=lambda line: None)


def test_model_arguments_resolve_or_say_what_is_missing(tiny_weights, tmp_path):
    """MODEL as a checkpoint directory (its config.yaml and state.pt), as a YAML without weights, or
    as something else: resolved, or an error saying what to pass."""
    from pipelines.config import ConfigError

    checkpoint = tmp_path / "checkpoint_step0000010"
    checkpoint.mkdir()
    tensors = torch.load(tiny_weights, weights_only=True)["model"]
    torch.save({"format_version": 1, "model": tensors}, checkpoint / "state.pt")
    (checkpoint / "meta.json").write_text('{"format_version": 1, "step": 10}')  # an older checkpoint: no file list
    with pytest.raises(WeightsError, match="has no config.yaml .* run it as EXPERIMENT.yaml model.weights="):
        resolve_model(str(checkpoint))
    (checkpoint / "config.yaml").write_text(load_experiment(TINY, TEST_SIZES).to_yaml())
    model = resolve_model(str(checkpoint), ["model.tracker.match_score_thr=0.45"])
    assert model.weights.location == str(checkpoint) and model.experiment.model.tracker.match_score_thr == 0.45
    network = build_model(model.experiment.model)
    load_weights(network, model.weights)
    assert all(torch.equal(network.state_dict()[name], tensor) for name, tensor in tensors.items())

    with pytest.raises(ConfigError, match="add model.weights=URI"):
        resolve_model(str(TINY))
    with pytest.raises(ConfigError, match="model.weights is for an experiment YAML"):
        resolve_model(str(checkpoint), [f"model.weights={tiny_weights}"])
    with pytest.raises(WeightsError, match="no such weights file or checkpoint directory"):
        resolve_model(str(tmp_path / "nothing-here"))
