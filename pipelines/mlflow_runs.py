"""A thin layer over MLflow: runs, resolved configs, metrics, artifacts and the model registry.

Where runs go:
- ``MLFLOW_TRACKING_URI`` or the experiment's ``tracking.tracking_uri`` when set (a real server:
  ``http://host:5000``);
- otherwise the embedded default: a local store inside the working directory,
  ``./mlruns/mlflow.db`` (runs and registry) with artifacts under ``./mlruns/artifacts``. No server
  is needed; browse it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

Only rank 0 writes: build the run with ``enabled=(rank == 0)``; on other ranks every method is a
no-op. The client API is used throughout (no fluent global state), so several runs can coexist
in one process and a run can be reattached by id after a restart.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from pipelines.storage import redact

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_STORE_DIR = "mlruns"


def default_tracking_uri(workdir: str | os.PathLike | None = None) -> str:
    root = Path(workdir or os.getcwd()).absolute() / LOCAL_STORE_DIR
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: Optional[str] = None, workdir: str | os.PathLike | None = None) -> str:
    """Config value, else MLFLOW_TRACKING_URI, else the local store in the working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def git_info(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit the code runs from (and whether the tree is dirty); 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {"git_commit": commit, "git_dirty": dirty}


def experiment_tags(experiment: Any, seed: Optional[int] = None) -> dict[str, str]:
    """Tags every run of an experiment carries: git commit, config hash, CL variant, seed, preset."""
    tags = {
        **git_info(),
        "config_hash": experiment.config_hash(),
        "experiment_file": str(experiment.source),
        "model_preset": experiment.model_preset,
        "seed": str(experiment.train.seed if seed is None else seed),
    }
    ctcl = getattr(experiment.model, "ctcl", None)
    if ctcl is not None and hasattr(ctcl, "negatives"):
        tags["cl_variant"] = str(ctcl.negatives)
    return tags


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    source: str
    run_id: Optional[str]
    aliases: tuple[str, ...]
    description: str
    tags: dict[str, str]


class MlflowRun:
    """One MLflow run. A disabled one (ranks other than 0) does nothing."""

    def __init__(self, tracking_uri: Optional[str] = None, enabled: bool = True, workdir: str | None = None):
        self.enabled = enabled
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self._workdir = Path(workdir or os.getcwd()).absolute()
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self._workdir) if enabled else None
        self._client = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def start(
        self,
        experiment_name: str,
        run_name: Optional[str] = None,
        run_id: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
    ) -> Optional[str]:
        """Start a new run, or reattach to `run_id` (after a restart) and mark it running again."""
        if not self.enabled:
            return None
        if run_id:
            run = self.client.get_run(run_id)
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.experiment_id = self._experiment_id(experiment_name)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id
        if tags and run_id:
            self.set_tags(tags)
        return self.run_id

    def _experiment_id(self, name: str) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:///"):
            # embedded default: artifacts beside the store, inside the working directory
            store_dir = Path(self.tracking_uri[len("sqlite:///"):]).parent
            artifact_location = (store_dir / "artifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # noqa: BLE001 - a concurrent creator won the race
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "MlflowRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    # -- logging -----------------------------------------------------------------------------
    def _require_run(self) -> str:
        if not self.run_id:
            raise RuntimeError("MlflowRun: start() a run first")
        return self.run_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self._require_run(), tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k[:250], redact(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self._require_run(), params=items[i : i + 100])

    def log_experiment_config(self, experiment: Any, seed: Optional[int] = None) -> None:
        """Params (every resolved key, dotted), the resolved YAML as an artifact, and the standard tags."""
        if not self.enabled:
            return
        self.log_params(experiment.flat_params())
        self.log_text(experiment.to_yaml(), "config/resolved.yaml")
        self.set_tags(experiment_tags(experiment, seed))

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: Optional[int] = None) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        ts = timestamp_ms or int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self._require_run(), metrics=items[i : i + 1000])

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self._require_run(), text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.enabled:
            self.log_text(json.dumps(obj, indent=2), artifact_file)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        if not self.enabled:
            return
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(self._require_run(), str(path), artifact_path)
        else:
            self.client.log_artifact(self._require_run(), str(path), artifact_path)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        if not self.enabled:
            return
        directory, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_bytes(data)
            self.log_artifact(target, directory or None)

    def artifact_uri(self) -> Optional[str]:
        if not self.enabled:
            return None
        return self.client.get_run(self._require_run()).info.artifact_uri

    # -- registry ----------------------------------------------------------------------------
    def register_model(
        self,
        name: str,
        artifact_path: str,
        description: str = "",
        tags: Optional[Mapping[str, Any]] = None,
        aliases: Iterable[str] = (),
    ) -> Optional[RegisteredVersion]:
        """Register the run's artifact directory `artifact_path` as a new version of model `name`."""
        if not self.enabled:
            return None
        return register_run_model(self.tracking_uri, self._require_run(), name, artifact_path, description, tags,
                                  aliases)


def register_run_model(tracking_uri: str, run_id: str, name: str, artifact_path: str, description: str = "",
                       tags: Optional[Mapping[str, Any]] = None, aliases: Iterable[str] = ()) -> RegisteredVersion:
    """Register run `run_id`'s artifact directory `artifact_path` as a new version of model `name`
    (created if needed), with `aliases` pointing at it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) and "already exists" not in str(exc):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path.strip('/')}"
    version = client.create_model_version(name, source=source, run_id=run_id, description=description,
                                          tags={k: str(v) for k, v in (tags or {}).items()})
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return get_model_version(name, version=version.version, tracking_uri=tracking_uri)


def get_model_version(
    name: str,
    version: Optional[str] = None,
    alias: Optional[str] = None,
    tracking_uri: Optional[str] = None,
) -> RegisteredVersion:
    """Look up a registered model version by number or alias (`models:/name@alias`)."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version or alias")
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    # search/get results may carry an empty alias list (an MLflow 3 quirk): read the model's aliases
    registered = client.get_registered_model(name)
    aliases = tuple(sorted(a for a, v in (registered.aliases or {}).items() if str(v) == str(mv.version)))
    return RegisteredVersion(
        name=name,
        version=str(mv.version),
        source=mv.source,
        run_id=mv.run_id,
        aliases=aliases,
        description=mv.description or "",
        tags=dict(mv.tags or {}),
    )
