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

import collections
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from pipelines.storage import redact

logger = logging.getLogger(__name__)

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


class TrackingUnreachable(RuntimeError):
    """The tracking server did not answer within the configured wait; the message names it."""


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the tracking server could not be reached or is temporarily failing (worth
    waiting for), as opposed to a request it rejected (retrying cannot help)."""
    import requests

    if isinstance(exc, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        if getattr(exc, "get_http_status_code", lambda: 500)() >= 500:
            return True
        text = str(exc)
        return any(words in text for words in ("Max retries exceeded", "Connection refused", "Connection aborted",
                                               "Read timed out", "RemoteDisconnected"))
    return False


class _QueuedSender:
    """Sends metric and tag batches of one run from a background thread, in the order they were
    logged. An unreachable tracking server delays them; it never blocks or fails the caller (the
    training loop). A batch is retried while the server is unreachable (`is_unreachable`); one the
    server rejects is logged, counted (`rejected`) and dropped. `flush` waits for the queue to drain.

    Outages are counted and timed (`outages`, `outage_s`) so that the run can record the gap.
    """

    def __init__(self, client: Any, run_id: str, retry_pause_s: float = 2.0):
        self._client, self._run_id, self._pause = client, run_id, retry_pause_s
        self._pending: collections.deque = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self.outages = 0
        self.outage_s = 0.0
        self.rejected = 0  # batches the server refused (not an outage): logged as errors and dropped
        self.last_error = ""
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def put(self, metrics: list = (), tags: list = ()) -> None:
        with self._changed:
            self._pending.append((list(metrics), list(tags)))
            self._changed.notify_all()

    def _send_loop(self) -> None:
        outage_started: Optional[float] = None
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                metrics, tags = self._pending[0]
            try:
                # MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES) run first, in this thread.
                self._client.log_batch(self._run_id, metrics=metrics, tags=tags)
            except Exception as exc:  # noqa: BLE001 - the server is down: keep the batch and retry
                if not is_unreachable(exc):  # rejected: retrying cannot help; say so and go on
                    self.rejected += 1
                    logger.error("MLflow rejected %d metrics / %d tags of run %s: %s", len(metrics), len(tags),
                                 self._run_id, redact(f"{type(exc).__name__}: {exc}")[:500])
                    with self._changed:
                        self._pending.popleft()
                        self._changed.notify_all()
                    continue
                if outage_started is None:
                    outage_started = time.monotonic()
                    self.outages += 1
                    logger.warning("MLflow unreachable; metrics are queued and sent when it answers (%s)",
                                   redact(f"{type(exc).__name__}: {exc}")[:300])
                self.last_error = redact(f"{type(exc).__name__}: {exc}")[:500]
                with self._changed:
                    self._changed.wait(self._pause)
                continue
            if outage_started is not None:
                self.outage_s += time.monotonic() - outage_started
                outage_started = None
                logger.warning("MLflow answers again; queued metrics are being sent")
            with self._changed:
                self._pending.popleft()
                self._changed.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued batch is accepted (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def close(self, timeout_s: float) -> bool:
        delivered = self.flush(timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if delivered:
            self._thread.join(timeout=5)
        return delivered


class MlflowRun:
    """One MLflow run. A disabled one (ranks other than 0) does nothing.

    With ``queued=True`` (the training loop) metrics and tags go through a background sender: a
    tracking server that goes away delays them and never the training; `close_queue` delivers what is
    left, waiting up to a bound, and records any outage on the run (tags ``mlflow_outages``,
    ``mlflow_outage_s``)."""

    def __init__(self, tracking_uri: Optional[str] = None, enabled: bool = True, workdir: str | None = None,
                 queued: bool = False):
        self.enabled = enabled
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self._workdir = Path(workdir or os.getcwd()).absolute()
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self._workdir) if enabled else None
        self._client = None
        self._queued = queued
        self._sender: Optional[_QueuedSender] = None

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

    def attach(self, run_id: str) -> None:
        """Use the existing run `run_id` without asking the server anything (a training worker: the
        driver created the run; the server may be unreachable right now)."""
        if not self.enabled:
            return
        self.run_id = run_id
        if self._queued:
            self._sender = _QueuedSender(self.client, run_id)

    def close_queue(self, timeout_s: float) -> None:
        """Deliver the queued metrics and tags, waiting up to `timeout_s` for the server; then record
        any outage on the run. Raises `TrackingUnreachable` if the server never answered."""
        if self._sender is None:
            return
        sender = self._sender
        if not sender.close(timeout_s):
            raise TrackingUnreachable(
                f"MLflow at {redact(self.tracking_uri)} did not accept {sender.pending()} queued metric batches of run "
                f"{self.run_id} within {timeout_s:.0f} s (tracking.outage_wait_s); last error: {sender.last_error}")
        self._sender = None
        if sender.outages:
            self.set_tags({"mlflow_outages": sender.outages, "mlflow_outage_s": round(sender.outage_s, 1)})
        if sender.rejected:
            self.set_tags({"mlflow_rejected_batches": sender.rejected})

    def when_reachable(self, action: Callable[[], Any], what: str, timeout_s: float, pause_s: float = 2.0) -> Any:
        """Run `action` (an artifact upload), retrying while the tracking server is unreachable, up to
        `timeout_s`; the error then names the server and what could not be logged."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - an unreachable server is waited for, then named
                if not is_unreachable(exc):
                    raise
                if time.monotonic() + pause_s > deadline:
                    raise TrackingUnreachable(f"MLflow at {redact(self.tracking_uri)}: could not log {what} for run "
                                              f"{self.run_id} within {timeout_s:.0f} s (tracking.outage_wait_s): "
                                              f"{redact(f'{type(exc).__name__}: {exc}')[:500]}") from None
                logger.warning("MLflow: logging %s failed, retrying (%s)", what, redact(str(exc))[:200])
                time.sleep(pause_s)

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

        items = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        if self._sender is not None:
            self._sender.put(tags=items)
            return
        self.client.log_batch(self._require_run(), tags=items)

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

        ts = timestamp_ms or int(time.time() * 1000)  # the time of the step, also when sent later
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            if self._sender is not None:
                self._sender.put(metrics=items[i : i + 1000])
            else:
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
