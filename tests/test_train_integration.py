"""End to end on real services: the tiny experiment trained by 2 Ray Train CPU workers on clip
batches streamed by Ray Data from shards in a moto S3 server, checkpoints in S3, tracked by a real
`mlflow server`; then the same run killed at a known step by the fault-injection knob, recovered by
Ray Train from its last checkpoint, ending at the same step with one MLflow run and the same loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import load_experiment
from pipelines.data import catalog, synth
from pipelines.data.ingest import IngestOptions, ingest
from tests.services import storage_env_vars
from tests.conftest import PROJECT_ROOT

MAX_ITER = 6


def tiny_overrides(train_shards: str, val_shards: str, runs_root: str, tracking_uri: str) -> list[str]:
    """The tiny experiment shrunk to test size: 64x64 frames, 2-frame clips, 6 steps of 4 clips."""
    return [
        f"data.train=[{{name: synth_train, shards: '{train_shards}'}}]",
        f"data.val={{name: synth_val, shards: '{val_shards}'}}",
        "data.sampling_frame_num=2", "data.sampling_frame_range=3", "data.min_size_train=[64]",
        "data.max_size_train=96", "data.crop.enabled=false", "data.min_size_test=64", "data.max_size_test=96",
        "data.decode_workers=1",
        "train.batch_size=4", f"train.schedule={{max_iter: {MAX_ITER}, steps: [4], warmup_iters: 2}}",
        "train.checkpoint_period=2", "train.keep_checkpoints=2", "train.eval_period=3", "train.log_period=1",
        "train.init_weights=null",
        "eval.max_videos=2", "eval.visualize_videos=1",
        "compute.num_workers=2", "compute.cpus_per_worker=0.5", "compute.cpus_per_decoder=0.25",
        "compute.max_failures=2", "compute.use_gpu=false",
        f"storage.runs_root={runs_root}", f"tracking.tracking_uri={tracking_uri}",
    ]


def make_synthetic_shards(root: str, num_classes: int = 3) -> tuple[str, str]:
    """Synthetic train/val splits written under `root` and ingested into shards there."""
    out = []
    for split, seed, videos in (("train", 11, 4), ("val", 12, 2)):
        raw = synth.generate(f"{root}/raw/{split}", synth.SynthConfig(
            num_videos=videos, min_frames=4, max_frames=6, height=64, width=64, num_classes=num_classes, seed=seed,
            start_video_id=1 + 100 * seed))
        info = catalog.resolve_split(f"synth_{split}", annotations=raw["annotations"], frames_root=raw["frames_root"])
        ingest(info, f"{root}/shards/{split}", IngestOptions(executor="local"))
        out.append(f"{root}/shards/{split}")
    return out[0], out[1]


@pytest.fixture(scope="module")
def s3_shards(s3_server):
    bucket = "train-integration"
    s3_server.client().create_bucket(Bucket=bucket)
    return make_synthetic_shards(f"s3://{bucket}/data")


def _runs(client, experiment_name: str, run_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.ray_run_name = '{run_name}'")


RUNS_ROOT = "s3://train-integration/runs"


@pytest.fixture(scope="module")
def clean_training(s3_shards, mlflow_server, ray_local):
    """The uninterrupted run the fault tests compare with: (overrides, experiment, summary)."""
    from pipelines.train.job import run_training

    train_shards, val_shards = s3_shards
    overrides = tiny_overrides(train_shards, val_shards, RUNS_ROOT, mlflow_server.tracking_uri)
    experiment = load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml", overrides + ["train.run_name=clean"])
    return overrides, experiment, run_training(experiment, worker_env=storage_env_vars())


@pytest.mark.integration
@pytest.mark.slow
def test_train_checkpoint_validate_register_then_recover_from_a_worker_fault(clean_training, s3_shards, mlflow_server):
    from mlflow.tracking import MlflowClient

    from pipelines import storage
    from pipelines.train.job import run_training

    train_shards, val_shards = s3_shards
    runs_root = RUNS_ROOT
    overrides, experiment, clean = clean_training

    assert clean.final_step == MAX_ITER and clean.final_loss > 0
    assert "val/AP" in clean.val_metrics and 0 <= clean.val_metrics["val/AP"] <= 100
    # checkpoints in S3: the last K=2 kept, the run's MLflow id beside them
    listing = storage.ls(f"{runs_root}/clean")
    checkpoints = sorted(u.rsplit("/", 1)[-1] for u in listing if "checkpoint_step" in u)
    assert checkpoints == ["checkpoint_step0000004", "checkpoint_step0000006"]
    info = storage.read_json(f"{runs_root}/clean/ctvis_run.json")
    assert info["mlflow_run_id"] == clean.mlflow_run_id and info["finished"] is True
    meta = storage.read_json(f"{runs_root}/clean/checkpoint_step0000006/meta.json")
    assert meta["mlflow_run_id"] == clean.mlflow_run_id and meta["data_position"] == MAX_ITER * 4

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    run = client.get_run(clean.mlflow_run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(clean.mlflow_run_id, "loss_total")
    assert sorted(m.step for m in history) == list(range(1, MAX_ITER + 1))  # every step logged once
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_ce_all_layers", "train/clips_per_s", "train/data_wait_s",
                "val/AP", "val/AP50"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(clean.mlflow_run_id, "val/AP")] == [3, 6]
    assert any(k.startswith("lr/") for k in run.data.metrics)
    assert run.data.params["train.schedule.max_iter"] == str(MAX_ITER)

    artifacts = {a.path for folder in ("config", "model", "results", "plots", "visualizations")
                 for a in client.list_artifacts(clean.mlflow_run_id, folder)}
    assert {"config/resolved.yaml", "model/MLmodel", "model/artifacts", "results/val_results.json",
            "results/val_metrics.json", "plots/loss_curves.png"} <= artifacts
    # The logged model is a pyfunc around our weights, the resolved config and the class table.
    assert {a.path for a in client.list_artifacts(clean.mlflow_run_id, "model/artifacts")} == {
        "model/artifacts/model.pt", "model/artifacts/config.yaml", "model/artifacts/classes.json"}
    assert any(p.startswith("visualizations/video_") and p.endswith(".png") for p in artifacts)
    results = json.loads(Path(client.download_artifacts(clean.mlflow_run_id, "results/val_results.json")).read_text())
    assert {r["video_id"] for r in results} <= {1 + 100 * 12, 2 + 100 * 12}
    # The last checkpoint is a model `ctvis predict` can run (it carries its config), and the predict
    # path gives the training's own final validation results.
    from pipelines.inference.model_source import resolve_model
    from tests.test_predict import in_process_results

    model = resolve_model(f"{runs_root}/clean/checkpoint_step0000006")
    assert model.experiment.model == experiment.model and model.weights.location.endswith("checkpoint_step0000006")
    assert in_process_results(model, val_shards, max_videos=2) == results

    version = client.get_model_version(experiment.name, clean.registered_version)
    assert version.run_id == clean.mlflow_run_id
    assert "AP" in version.description and "val_AP" in version.tags

    # the same run, killed at step 3 by the fault-injection knob and restarted by Ray Train
    faulty_experiment = load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml",
                                        overrides + ["train.run_name=faulty", "train.fault_at_step=3"])
    faulty = run_training(faulty_experiment, worker_env=storage_env_vars())
    assert storage.exists(f"{runs_root}/faulty/fault_injected_step3.json")
    assert faulty.final_step == MAX_ITER
    assert faulty.final_loss == pytest.approx(clean.final_loss, rel=1e-5)
    runs = _runs(client, experiment.name, "faulty")
    assert [r.info.run_id for r in runs] == [faulty.mlflow_run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags.get("resumed_from_step") == "2"  # restarted from the step-2 checkpoint
    steps = [m.step for m in client.get_metric_history(faulty.mlflow_run_id, "loss_total")]
    assert set(steps) == set(range(1, MAX_ITER + 1)) and steps.count(3) == 2  # step 3 ran twice


@pytest.mark.integration
@pytest.mark.slow
def test_training_through_flaky_s3_ends_with_the_clean_loss(clean_training, s3_server, mlflow_server):
    """Clip streaming (Ray Data reading the shards), the progress file and the checkpoint uploads (Ray
    Train's storage) all go through the fault-injecting proxy (tests/faults.py): the run ends at the
    planned step with the clean run's loss and its checkpoints whole."""
    from mlflow.tracking import MlflowClient

    from pipelines import storage
    from pipelines.train.job import run_training
    from pipelines.weights import check_checkpoint_complete
    from tests.faults import FaultyProxy, through
    from tests.test_faults import FLAKY

    overrides, _, clean = clean_training
    host, port = s3_server.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultyProxy((host, int(port)), FLAKY, seed=99) as proxy, through(proxy):
        experiment = load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml", overrides + ["train.run_name=flaky"])
        flaky = run_training(experiment, worker_env={**storage_env_vars(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                             log=lambda line: None)
        assert flaky.final_step == MAX_ITER
        assert flaky.final_loss == pytest.approx(clean.final_loss, rel=1e-5)
    faults = {k: v for k, v in proxy.counts.items() if k != "pass"}
    assert len(faults) >= 3 and sum(faults.values()) >= 10, proxy.counts
    for step in (4, 6):
        check_checkpoint_complete(f"{RUNS_ROOT}/flaky/checkpoint_step{step:07d}")
    run = MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_run(flaky.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert storage.read_json(f"{RUNS_ROOT}/flaky/ctvis_run.json")["finished"] is True
