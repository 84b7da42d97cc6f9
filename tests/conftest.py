"""Shared pytest fixtures.

The reference fixtures produced by the original implementations live in ``../shared/reference``
relative to the project root (CI has them there too); ``CTVIS_REFERENCE_DIR`` overrides that.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def reference_root() -> Path:
    override = os.environ.get("CTVIS_REFERENCE_DIR")
    return Path(override) if override else PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    root = reference_root()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root} (set CTVIS_REFERENCE_DIR)")
    return root


# --------------------------------------------------------------------------------------------
# Real services, started on 127.0.0.1 by the tests and stopped by them.
import contextlib  # noqa: E402
import uuid  # noqa: E402

from tests import services  # noqa: E402


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Weights of the tiny model (experiments/tiny.yaml, seed 0, untrained: arbitrary but deterministic
    outputs) in our model.pt format."""
    import torch

    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.weights import WEIGHTS_FORMAT

    torch.manual_seed(0)
    model = build_model(load_experiment(PROJECT_ROOT / "experiments" / "tiny.yaml").model)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save({"format": WEIGHTS_FORMAT, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server subprocess on 127.0.0.1; AWS_* env points at it for the whole session."""
    workdir = tmp_path_factory.mktemp("moto")
    with services.moto_server(workdir) as server, _patched_environ(server.env):
        from pipelines import storage

        storage.configure_s3(storage.S3Options())  # drop filesystems cached before the env changed
        yield server


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket name on the moto server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` (sqlite store, artifacts proxied to the moto bucket)."""
    workdir = tmp_path_factory.mktemp("mlflow")
    bucket = "mlflow-artifacts"
    s3_server.client().create_bucket(Bucket=bucket)
    with services.mlflow_server(workdir, s3_server, bucket) as server:
        yield server


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory, s3_server):
    """A Ray local cluster on 127.0.0.1 only, with its auth token in a temporary HOME.

    It starts after the S3 server so that every Ray process (Train controllers and workers, Data
    actors) inherits the AWS endpoint and test credentials, whatever order the tests run in."""
    home = tmp_path_factory.mktemp("rayhome")
    with _patched_environ(services.ray_loopback_env(home)):
        import ray

        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            yield ray
        finally:
            ray.shutdown()
