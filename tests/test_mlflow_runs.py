"""MLflow tracking through a real `mlflow server` (sqlite store, artifacts in moto S3) and the local default."""
from __future__ import annotations

import dataclasses
import os

import pytest

from pipelines import mlflow_runs
from pipelines.config import build_experiment


@dataclasses.dataclass(frozen=True)
class _CTCL:
    negatives: str = "released"
    reid_weight: float = 2.0


@dataclasses.dataclass(frozen=True)
class _Model:
    num_queries: int = 10
    ctcl: _CTCL = _CTCL()


def _experiment():
    raw = {
        "name": "tracking-test",
        "model": {"preset": "p", "ctcl": {"reid_weight": 3.0}},
        "data": {"train": [{"name": "synthetic_train"}]},
        "storage": {"s3": {"secret_access_key": "do-not-log-me-42", "access_key_id": "AKIA-do-not-log"}},
    }
    return build_experiment(raw, "inline.yaml", preset_table={"p": _Model})


def _log_a_run(mlflow_run: mlflow_runs.MlflowRun, tmp_path):
    exp = _experiment()
    run_id = mlflow_run.start("tracking-test", run_name="unit")
    mlflow_run.log_experiment_config(exp)
    for step in range(3):
        mlflow_run.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-4}, step=step)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.pt").write_bytes(b"\x00" * 1024)
    mlflow_run.log_artifact(weights, "weights")
    version = mlflow_run.register_model(
        "ctvis-test-model", "weights", description="AP 12.3", tags={"ap": "12.3"}, aliases=["champion"]
    )
    mlflow_run.end()
    return exp, run_id, version


def _check_run(client, exp, run_id):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.ctcl.reid_weight"] == "3.0"
    assert run.data.params["data.train.0.name"] == "synthetic_train"
    assert run.data.tags["config_hash"] == exp.config_hash()
    assert run.data.tags["cl_variant"] == "released"
    assert run.data.tags["seed"] == "0"
    assert len(run.data.tags["git_commit"]) in (40, 7) or run.data.tags["git_commit"] == "unknown"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert history[-1].value == pytest.approx(1 / 3)
    # credentials are never logged, in params or in the resolved YAML
    assert all("do-not-log" not in v for v in run.data.params.values())
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config", "weights"} <= artifacts
    local = client.download_artifacts(run_id, "config/resolved.yaml")
    text = open(local).read()
    assert "do-not-log" not in text and "reid_weight: 3.0" in text


@pytest.mark.integration
def test_tracking_against_a_real_mlflow_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    mlflow_run = mlflow_runs.MlflowRun(tracking_uri=mlflow_server.tracking_uri)
    exp, run_id, version = _log_a_run(mlflow_run, tmp_path)
    client = MlflowClient(mlflow_server.tracking_uri)
    _check_run(client, exp, run_id)
    # artifacts went through the server's proxy into the S3 bucket
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")

    by_alias = mlflow_runs.get_model_version("ctvis-test-model", alias="champion", tracking_uri=mlflow_server.tracking_uri)
    assert by_alias.version == version.version
    assert by_alias.run_id == run_id
    assert by_alias.aliases == ("champion",)
    assert by_alias.description == "AP 12.3" and by_alias.tags["ap"] == "12.3"
    downloaded = client.download_artifacts(run_id, "weights/model.pt")
    assert os.path.getsize(downloaded) == 1024


def test_embedded_default_store_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow_run = mlflow_runs.MlflowRun()
    assert mlflow_run.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    exp, run_id, version = _log_a_run(mlflow_run, tmp_path)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_run.tracking_uri)
    _check_run(client, exp, run_id)
    assert (tmp_path / "mlruns" / "artifacts" / "tracking-test").is_dir()
    assert mlflow_runs.get_model_version("ctvis-test-model", alias="champion").version == "1"


def test_reattach_to_a_run_by_id(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    first = mlflow_runs.MlflowRun()
    run_id = first.start("reattach")
    first.log_metrics({"loss": 2.0}, step=0)
    first.end("KILLED")
    second = mlflow_runs.MlflowRun()
    assert second.start("reattach", run_id=run_id) == run_id
    second.log_metrics({"loss": 1.0}, step=1)
    second.end()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(second.tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1]
    assert len(client.search_runs([second.experiment_id])) == 1


def test_disabled_tracker_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow_run = mlflow_runs.MlflowRun(enabled=False)
    assert mlflow_run.start("x") is None
    mlflow_run.log_metrics({"a": 1}, step=0)
    mlflow_run.log_experiment_config(_experiment())
    assert mlflow_run.register_model("m", "weights") is None
    mlflow_run.end()
    assert not (tmp_path / "mlruns").exists()
