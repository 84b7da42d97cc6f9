"""Weights by URI (pipelines.weights): files, checkpoint directories and registry URIs, opened safely
and checked against the model on the driver, with errors that name the file and never advise an
unsafe load."""
from __future__ import annotations

import pickle

import pytest
import torch

from models.model import build_model
from pipelines.config import load_experiment
from pipelines.weights import (
    WEIGHTS_FORMAT,
    WeightsError,
    check_weights,
    load_weights,
    resolve_weights,
)
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def tiny_config():
    return load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml").model


def _save_ours(model, path):
    torch.save({"format": WEIGHTS_FORMAT, "model": model.state_dict()}, path)


def test_our_weights_check_then_load_bit_identical(tiny_config, tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_config)
    _save_ours(source, tmp_path / "model.pt")
    check = check_weights(str(tmp_path / "model.pt"), tiny_config)
    assert check.kind == "ours" and check.matched == check.total == len(source.state_dict())
    torch.manual_seed(2)
    target = build_model(tiny_config)
    report = load_weights(target, check.source)
    assert report.splitlines()[0].endswith(f"loaded {len(source.state_dict())}, missing 0, unexpected 0, shape-skipped 0")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_unsafe_pth_is_refused_without_advising_an_unsafe_load(tiny_config, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(WeightsError) as caught:
        check_weights(str(path), tiny_config)
    message = str(caught.value)
    assert str(path) in message and "refused" in message and "posix.system" in message
    assert "weights_only=False" not in message and "weights_only" not in message


def test_unsafe_pkl_is_refused(tiny_config, tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "x": _Exploit()}, protocol=2))
    with pytest.raises(WeightsError, match="refus"):
        check_weights(str(path), tiny_config)


@pytest.mark.parametrize("content,reason", [(b"not a zip at all", "not a readable PyTorch checkpoint"),
                                            (b"", "not a readable PyTorch checkpoint")])
def test_corrupt_or_empty_files_name_the_file(tiny_config, tmp_path, content, reason):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=reason) as caught:
        check_weights(str(path), tiny_config)
    assert str(path) in str(caught.value)


def test_missing_file_wrong_suffix_and_unrelated_weights(tiny_config, tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        check_weights(str(tmp_path / "absent.pth"), tiny_config)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        check_weights(str(tmp_path / "weights.bin"), tiny_config)
    torch.save({"model": {"some.other.net.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="nothing in the file fits this model"):
        check_weights(str(tmp_path / "other.pth"), tiny_config)


def test_checkpoint_directory_uses_its_state(tiny_config, tmp_path):
    torch.manual_seed(3)
    source = build_model(tiny_config)
    directory = tmp_path / "checkpoint_step0000010"
    directory.mkdir()
    torch.save({"format_version": 1, "model": source.state_dict()}, directory / "state.pt")
    (directory / "meta.json").write_text('{"format_version": 1, "step": 10}')  # written last by TrainState.save
    check = check_weights(str(directory), tiny_config)
    assert check.matched == check.total


def test_registry_uris_resolve_to_a_pinned_version(tiny_config, tmp_path):
    from pipelines.mlflow_runs import MlflowRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(4)
    source = build_model(tiny_config)
    weights_dir = tmp_path / "model"
    weights_dir.mkdir()
    _save_ours(source, weights_dir / "model.pt")
    mlflow_run = MlflowRun(uri, workdir=str(tmp_path))
    mlflow_run.start("weights-test", run_name="r")
    mlflow_run.log_artifact(weights_dir, "model")
    version = mlflow_run.register_model("tinyw", "model", aliases=["best"])
    mlflow_run.end()

    pinned = resolve_weights("models:/tinyw@best", uri)
    assert pinned.location == f"models:/tinyw/{version.version}" and pinned.registry_version == f"tinyw/{version.version}"
    check = check_weights("models:/tinyw/1", tiny_config, uri)
    assert check.matched == check.total
    torch.manual_seed(5)
    target = build_model(tiny_config)
    load_weights(target, pinned)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())

    with pytest.raises(WeightsError) as caught:
        resolve_weights("models:/tinyw/7", uri)
    assert "models:/tinyw/7" in str(caught.value) and "tinyw" in str(caught.value) and "mlflow.db" in str(caught.value)
    with pytest.raises(WeightsError, match="no model named 'nosuch' is registered"):
        resolve_weights("models:/nosuch@best", uri)
    with pytest.raises(WeightsError, match="expected models:/NAME/VERSION"):
        resolve_weights("models:/bad/name/x", uri)


@pytest.mark.parametrize("layout", ["flat", "pyfunc"])
def test_a_registered_models_config_is_read_without_downloading_its_weights(tmp_path, monkeypatch, layout):
    """`ctvis predict/infer models:/...` read config.yaml on the driver; the weights beside it (177 MB
    for an R50) are fetched once, where the model is built, not a second time for the config."""
    import mlflow.artifacts

    from pipelines.inference.model_source import resolve_model
    from pipelines.mlflow_runs import MlflowRun
    from pipelines.weights import fetch_registered_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml", ["data.min_size_test=96"])
    registered = tmp_path / "model"
    files = registered / "artifacts" if layout == "pyfunc" else registered  # the pyfunc keeps its files below
    files.mkdir(parents=True)
    _save_ours(build_model(experiment.model), files / "model.pt")
    (files / "config.yaml").write_text(experiment.to_yaml())
    mlflow_run = MlflowRun(uri, workdir=str(tmp_path))
    mlflow_run.start("config-only", run_name="r")
    mlflow_run.log_artifact(registered, "model")
    mlflow_run.register_model("cfg", "model", aliases=["best"])
    mlflow_run.end()

    downloaded = []
    real_download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda **kw: downloaded.append(kw["artifact_uri"]) or real_download(**kw))
    model = resolve_model("models:/cfg@best", [], uri)
    assert model.experiment.data.min_size_test == 96 and model.weights.location == "models:/cfg/1"
    assert len(downloaded) == 1 and downloaded[0].endswith("config.yaml"), downloaded
    assert fetch_registered_file(model.weights, "classes.json", tmp_path / "dl") is None
