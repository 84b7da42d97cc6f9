"""The training driver: one MLflow run, one Ray Train `TorchTrainer`, the registered model.

    summary = run_training(load_experiment("experiments/tiny.yaml"))

1. Resolve where things go: the MLflow tracking URI (config, ``MLFLOW_TRACKING_URI`` or the local
   store), the run's storage (``storage.runs_root``: a local directory or ``s3://``) and its name
   (``train.run_name`` or the experiment's name).
2. The MLflow run: a run directory that already holds ``ctvis_run.json`` belongs to a run whose
   driver died (or was stopped): reattach to its MLflow run; otherwise create the run, log the
   resolved config (params, YAML, tags) and write ``ctvis_run.json`` before any worker starts.
3. `TorchTrainer(train_worker)` with the same `RunConfig(name, storage_path)`: Ray Train V2 resumes
   from the run's latest checkpoint; `FailureConfig(max_failures)` restarts a failed worker group
   from it; `CheckpointConfig(num_to_keep)` keeps the last K.
4. After `fit()`: the loss-curve plot from the run's metric history, the model version registered
   under the experiment's name (validation metrics in its description and tags), the run ended.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

from pipelines import storage
from pipelines.train import state
from pipelines.train.preflight import (
    PreflightError,
    check_cluster,
    check_init_weights,
    check_static,
    config_changes,
    resolve_paths,
    with_dataset_classes,
)

# the curves of the loss plot (the per-family sums over decoder layers, the re-id terms, the total)
PLOTTED_LOSSES = ("loss_total", "loss_ce_all_layers", "loss_mask_all_layers", "loss_dice_all_layers", "loss_reid",
                  "loss_aux_reid")


@dataclasses.dataclass
class TrainingSummary:
    experiment_name: str
    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    artifact_uri: str
    run_dir: str  # Ray Train run directory (snapshot + checkpoints)
    final_step: int
    final_loss: float
    val_metrics: dict[str, float]
    checkpoint: Optional[str]  # URI of the last checkpoint
    registered_model: Optional[str]
    registered_version: Optional[str]
    resumed: bool  # this driver reattached to an existing run
    wall_time_s: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ray_storage(runs_root: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for `RunConfig`: a local path, or an S3 path without
    its scheme plus a pyarrow S3 filesystem (endpoint and region from the environment; credentials
    stay with each process's environment, never in the pickled filesystem)."""
    if not storage.is_remote(runs_root):
        return storage.split_uri(runs_root)[1], None
    filesystem, path = storage.pyarrow_filesystem(runs_root, storage.S3Options(
        endpoint_url=storage.S3Options().resolved_endpoint(), region=storage.S3Options().resolved_region()))
    return path, filesystem


def _start_tracking(experiment: Any, mlflow_run: Any, runs_root: str, run_name: str, log: Callable[[str], None],
                    resume_changed: bool = False) -> bool:
    """Create or reattach the MLflow run; returns True when reattached.

    A run is continued only with the config it was started with: a different config hash is an
    error naming the keys that differ, unless `resume_changed` (then the change is recorded in the run)."""
    from pipelines.mlflow_runs import experiment_tags

    mlflow_experiment = experiment.tracking.experiment_name or experiment.name
    info = state.read_run_info(runs_root, run_name)
    where = storage.redact(state.run_dir(runs_root, run_name))
    if info is not None and info.get("finished"):
        raise PreflightError(
            f"run '{run_name}' in {storage.redact(runs_root)} already finished (MLflow run {info.get('mlflow_run_id')}); "
            f"set train.run_name=<new name> or remove {where}")
    params = experiment.flat_params()
    changes: list[str] = []
    if info is not None and info.get("config_hash") not in (None, experiment.config_hash()):
        changes = config_changes(info.get("config") or {}, params) or ["(the run was started before configs were "
                                                                       "recorded: the hashes differ)"]
        if not resume_changed:
            listed = "; ".join(changes[:12]) + (f"; and {len(changes) - 12} more" if len(changes) > 12 else "")
            raise PreflightError(
                f"run '{run_name}' in {where} was started with another config ({listed}). Run it with the "
                f"config it was started with, choose a new train.run_name, or pass --resume-changed to continue "
                f"this run with the new config (recorded in its MLflow run)")
    if info is not None and info.get("mlflow_run_id") and info.get("tracking_uri") == mlflow_run.tracking_uri:
        mlflow_run.start(mlflow_experiment, run_id=info["mlflow_run_id"])
        starts = int(info.get("driver_starts", 1)) + 1
        mlflow_run.set_tags({"driver_starts": starts})
        updated = {**info, "driver_starts": starts, "updated_at": time.time()}
        if changes:
            log(f"continuing run '{run_name}' with a changed config (--resume-changed): {'; '.join(changes)}")
            mlflow_run.set_tags({f"resume_changed_at_start_{starts}": "; ".join(changes)[:4900]})
            mlflow_run.log_text(experiment.to_yaml(), f"config/resolved_driver_start_{starts}.yaml")
            updated.update(config_hash=experiment.config_hash(), config=params)
        state.write_run_info(runs_root, run_name, updated)
        log(f"reattached to MLflow run {mlflow_run.run_id} (driver start {starts})")
        return True
    tags = {**experiment_tags(experiment), "ray_run_name": run_name, "ray_run_dir": where}
    if experiment.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = experiment.tracking.parent_run_id  # a sweep's trial: nested in the UI
    mlflow_run.start(mlflow_experiment, run_name=run_name, tags=tags)
    mlflow_run.log_experiment_config(experiment)
    state.write_run_info(runs_root, run_name, {
        "mlflow_run_id": mlflow_run.run_id, "tracking_uri": mlflow_run.tracking_uri, "experiment": experiment.name,
        "config_hash": experiment.config_hash(), "config": params, "driver_starts": 1, "created_at": time.time(),
        "finished": False,
    })
    log(f"MLflow run {mlflow_run.run_id} ({storage.redact(mlflow_run.tracking_uri)})")
    return False


def _prune_checkpoints(runs_root: str, run_name: str, keep: int, log=print) -> None:
    """Keep only the last `keep` checkpoints of the run once training is over.

    Ray Train prunes to `CheckpointConfig(num_to_keep)` while it runs, but that deletion can still be
    pending when `fit()` returns (seen on a loaded 2-core machine); the run must end with exactly the
    last K checkpoints in storage, so the driver finishes the job. Names sort by step (zero-padded)."""
    run_dir = state.run_dir(runs_root, run_name)
    try:
        names = sorted(u for u in storage.ls(run_dir) if u.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_step"))
    except storage.StorageNotFound:
        return
    for stale in names[:-keep] if keep > 0 else []:
        log(f"removing checkpoint beyond the last {keep}: {storage.redact(stale)}")
        storage.remove(stale, recursive=True)


def build_trainer(experiment: Any, *, run_name: str, runs_root: str, tracking_uri: str, mlflow_run_id: str,
                  worker_env: Optional[dict[str, str]] = None, init_weights: Any = None, callbacks: Sequence[Any] = ()):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import runtime_env_vars
    from pipelines.train.loop import train_worker

    compute = experiment.compute
    resources = {"CPU": compute.cpus_per_worker}
    if compute.use_gpu:
        resources["GPU"] = compute.gpus_per_worker
    storage_path, filesystem = ray_storage(runs_root)
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "experiment": experiment,
            "run_name": run_name,
            "runs_root": runs_root,
            "tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run_id,
            "experiment_name": experiment.tracking.experiment_name or experiment.name,
            "init_weights": init_weights,  # a pipelines.weights.WeightsSource, pinned by the driver
        },
        scaling_config=ScalingConfig(num_workers=compute.num_workers, use_gpu=compute.use_gpu,
                                     resources_per_worker=resources, placement_strategy=compute.placement_strategy),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=compute.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=experiment.train.keep_checkpoints),
            worker_runtime_env=runtime_env_vars(worker_env),
            callbacks=list(callbacks) or None,
        ),
    )


def _metric_curves(mlflow_run: Any, keys: tuple[str, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} from the run's history; a step logged twice (re-run after a restart
    from a checkpoint) keeps its latest value."""
    curves = {}
    for key in keys:
        history = mlflow_run.client.get_metric_history(mlflow_run.run_id, key)
        by_step: dict[int, tuple[int, float]] = {}
        for m in history:
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, m.value)
        if by_step:
            steps = sorted(by_step)
            curves[key] = (steps, [by_step[s][1] for s in steps])
    return curves


def _register(experiment: Any, mlflow_run: Any, val_metrics: dict[str, float], final_step: int, final_loss: float):
    from mlflow.exceptions import MlflowException

    name = experiment.tracking.registered_model_name or experiment.name
    try:
        if not mlflow_run.client.list_artifacts(mlflow_run.run_id, "model"):
            return None  # no weights were logged (rank 0 logs them at the final step)
    except MlflowException:
        return None
    metrics_text = ", ".join(f"{k.split('/', 1)[-1]} {v:.2f}" for k, v in val_metrics.items()
                             if k.split("/", 1)[-1] in ("AP", "AP50", "AP75", "AR1", "AR10"))
    description = (f"{experiment.name}: {final_step} steps, final loss {final_loss:.4f}. "
                   f"Validation ({experiment.eval.benchmark}, x100): {metrics_text or 'not run'}. "
                   f"MLflow run {mlflow_run.run_id}; config hash {experiment.config_hash()}.")
    from pipelines.zoo.registry import zoo_tags

    network = experiment.model.network
    # The zoo's tag names (backbone, benchmark, queries, AP...), so that trained and published models
    # compare side by side in the MLflow UI.
    tags = zoo_tags(network.backbone.kind, (experiment.data.val.name if experiment.data.val else "none"),
                    network.transformer_decoder.num_queries,
                    {k.split("/", 1)[-1]: v for k, v in val_metrics.items()
                     if k.split("/", 1)[-1] in ("AP", "AP50", "AP75", "AR1", "AR10", "AP_S", "AP_L")}, "trained")
    tags.update({k.replace("/", "_"): f"{v:.4f}" for k, v in val_metrics.items()})
    tags.update({"final_step": final_step, "final_loss": f"{final_loss:.6f}", "config_hash": experiment.config_hash(),
                 "model_preset": experiment.model_preset})
    return mlflow_run.register_model(name, "model", description=description, tags=tags)


def prepare(experiment: Any, log: Callable[[str], None] = print) -> Any:
    """The checks that need no Ray: absolute local paths, run storage that survives a job, shards,
    batch divisibility (see `pipelines.train.preflight`). Returns the experiment with absolute paths
    and the number of classes of its training data."""
    from pipelines.ray_runtime import in_ray_job

    storage.configure_s3(storage.S3Options.from_config(experiment.storage.s3))
    experiment = resolve_paths(experiment, in_job=in_ray_job())
    return with_dataset_classes(experiment, check_static(experiment), log)


def run_training(experiment: Any, *, worker_env: Optional[dict[str, str]] = None,
                 log: Callable[[str], None] = print, ray_address: Optional[str] = None,
                 resume_changed: bool = False, callbacks: Sequence[Any] = ()) -> TrainingSummary:
    """Train `experiment` on the connected Ray cluster (or a local one), end to end.

    Every check runs before the MLflow run is created or a worker starts (`prepare`, then the
    cluster's resources and the initial weights); while it trains, the driver prints progress
    (step, loss, clips/s, ETA) and says when no step completes for `compute.stall_timeout_s`."""
    from pipelines.ray_runtime import connect
    from pipelines.mlflow_runs import MlflowRun
    from pipelines.train.visualize import loss_curve_plot

    from pipelines.ray_runtime import runtime_env_vars

    runtime_env_vars(worker_env)  # secrets refused before anything starts
    started = time.time()
    experiment = prepare(experiment, log)
    runs_root = experiment.storage.runs_root
    run_name = experiment.train.run_name or experiment.name
    # models:/ URIs resolve against the run's registry (pipelines.mlflow_runs.resolve_tracking_uri)
    init_weights = check_init_weights(experiment, experiment.tracking.tracking_uri, log)
    cluster = connect(ray_address, log=log)
    check_cluster(experiment, cluster, log)
    mlflow_run = MlflowRun(experiment.tracking.tracking_uri)
    resumed = _start_tracking(experiment, mlflow_run, runs_root, run_name, log, resume_changed)
    trainer = build_trainer(experiment, run_name=run_name, runs_root=runs_root, tracking_uri=mlflow_run.tracking_uri,
                            mlflow_run_id=mlflow_run.run_id, worker_env=worker_env, init_weights=init_weights,
                            callbacks=callbacks)
    watchdog = ProgressWatchdog(runs_root, run_name, experiment.train.schedule.max_iter,
                                experiment.compute.stall_timeout_s, log)
    try:
        with watchdog:
            result = trainer.fit()
        if getattr(result, "error", None) is not None:
            raise result.error
    except (KeyboardInterrupt, SystemExit) as stop:
        mlflow_run.end("KILLED")  # stopped, not broken: running the same command again continues it
        if type(stop) is SystemExit:
            # Ray ends a fit() interrupted by SIGINT (its graceful abort) or by a signal inside ray.get
            # with a bare SystemExit; to the caller it is an interruption.
            raise KeyboardInterrupt from None
        raise
    except BaseException:
        mlflow_run.end("FAILED")
        raise
    _prune_checkpoints(runs_root, run_name, experiment.train.keep_checkpoints, log)
    metrics = dict(result.metrics or {})
    final_step = int(metrics.get("step", 0))
    final_loss = float(metrics.get("loss", float("nan")))
    val_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
    mlflow_run.log_bytes(loss_curve_plot(_metric_curves(mlflow_run, PLOTTED_LOSSES), title=f"{experiment.name} losses"),
                      "plots/loss_curves.png")
    registered = (_register(experiment, mlflow_run, val_metrics, final_step, final_loss)
                  if experiment.tracking.register_model else None)
    mlflow_run.end("FINISHED")
    info = state.read_run_info(runs_root, run_name) or {}
    state.write_run_info(runs_root, run_name, {**info, "finished": True, "final_step": final_step,
                                               "final_loss": final_loss, "val_metrics": val_metrics,
                                               "finished_at": time.time()})
    checkpoint_uri = None
    if result.checkpoint is not None:
        path = result.checkpoint.path
        checkpoint_uri = path if not storage.is_remote(runs_root) else f"s3://{path}"
    return TrainingSummary(
        experiment_name=experiment.name, run_name=run_name, mlflow_run_id=mlflow_run.run_id,
        tracking_uri=storage.redact(mlflow_run.tracking_uri), artifact_uri=mlflow_run.artifact_uri(),
        run_dir=storage.redact(state.run_dir(runs_root, run_name)), final_step=final_step, final_loss=final_loss,
        val_metrics=val_metrics, checkpoint=checkpoint_uri,
        registered_model=registered.name if registered else None,
        registered_version=registered.version if registered else None, resumed=resumed,
        wall_time_s=time.time() - started)


class ProgressWatchdog:
    """A driver thread that reads rank 0's progress file while `fit()` blocks: a line every
    `interval_s` (step/max, loss, clips/s, ETA) and, when no step completes for `stall_timeout_s`,
    a warning that says what the cluster is waiting for (repeated while the stall lasts)."""

    def __init__(self, runs_root: str, run_name: str, max_iter: int, stall_timeout_s: float,
                 log: Callable[[str], None], interval_s: float = 30.0, poll_s: float = 5.0):
        import threading

        self.runs_root, self.run_name, self.max_iter = runs_root, run_name, max_iter
        self.stall_timeout_s, self.interval_s, self.poll_s = stall_timeout_s, interval_s, poll_s
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ctvis-progress", daemon=True)

    def __enter__(self) -> "ProgressWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _read(self) -> Optional[dict]:
        try:
            return state.read_progress(self.runs_root, self.run_name)
        except (storage.StorageError, ValueError):
            return None  # storage hiccup or a file mid-write: try again next poll

    def _watch(self) -> None:
        begun = time.monotonic()
        last_step, last_change = None, begun
        last_line = begun
        first = self._read()  # a previous driver's file: progress means a newer step than this
        baseline_time = first.get("time") if first else None
        while not self._stop.wait(self.poll_s):
            progress = self._read()
            if progress is not None and progress.get("time") == baseline_time:
                progress = None
            now = time.monotonic()
            step = progress.get("step") if progress else None
            if step != last_step:
                last_step, last_change = step, now
            first_step = progress is not None and last_line == begun and progress.get("phase") != "starting"
            if progress and (first_step or now - last_line >= self.interval_s):
                self.log(self.format(progress))
                last_line = now
            if now - last_change >= self.stall_timeout_s:
                from pipelines.ray_runtime import resource_diagnosis

                where = f"last at step {last_step}" if last_step is not None else "no step finished yet"
                message = (f"warning: no training progress for {now - last_change:.0f} s ({where}); "
                           f"{resource_diagnosis()}")
                self.log(message)
                last_change = now

    def format(self, progress: dict) -> str:
        step, total = int(progress.get("step", 0)), self.max_iter
        if progress.get("phase") == "starting":
            return f"workers started at step {step}/{total}: waiting for the first step (model, data pipeline)"
        rate = progress.get("steps_per_s")
        eta = f", ETA {_duration((total - step) / rate)}" if rate else ""
        loss = progress.get("loss")
        return (f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"
                + (f", loss {loss:.4f}" if loss is not None else "")
                + (f", {progress['clips_per_s']:.1f} clips/s" if progress.get("clips_per_s") else "") + eta)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_summary(summary: TrainingSummary) -> str:
    lines = [f"experiment {summary.experiment_name}: {summary.final_step} steps, final loss {summary.final_loss:.4f}"
             f" ({summary.wall_time_s:.0f} s{', resumed' if summary.resumed else ''})"]
    if summary.val_metrics:
        # -1 is the official evaluator's "no ground truth for this statistic"
        lines.append("validation (x100): " + ", ".join(f"{k[4:]} {v:.1f}" if v >= 0 else f"{k[4:]} -"
                                                       for k, v in summary.val_metrics.items()))
    lines.append(f"MLflow run {summary.mlflow_run_id} at {summary.tracking_uri}")
    lines.append(f"artifacts: {summary.artifact_uri}")
    lines.append(f"checkpoints: {summary.run_dir}")
    if summary.registered_model:
        lines.append(f"registered model: models:/{summary.registered_model}/{summary.registered_version}")
    return "\n".join(lines)
