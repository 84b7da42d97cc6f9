"""The sweep driver: a Ray Tune run over a sweep's search space, resumable, recorded in MLflow.

The Tune experiment lives at ``<storage_root>/<sweep name>`` (local or ``s3://``); running the same
command again after the driver died restores it (`Tuner.restore`): finished trials are kept, the
others run again (a training trial continues its Ray Train run from its last checkpoint). A failing
trial is retried ``max_failures`` times and then reported as failed; it never ends the sweep.

MLflow: one parent run per sweep (``ctvis_sweep.json`` beside the Tune state keeps its id for a
resumed driver) with the searched keys, the best trial's metrics and settings, and as artifacts the
trials table (``sweep/trials.csv``), the metric against each key and a parallel-coordinates plot
(``sweep/plots.png``), the sweep YAML and the best settings (``sweep/best_overrides.txt``, and for
training sweeps ``sweep/best_experiment.yaml``, which `ctvis train` takes as it is). Training trials
are nested child runs (their `ctvis train` runs).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pipelines import storage

STATE_FILE = "ctvis_sweep.json"


@dataclasses.dataclass
class SweepSummary:
    name: str
    kind: str
    metric: str
    trials: list[dict[str, Any]]  # one row per trial: id, status, searched values, metrics
    best: Optional[dict[str, Any]]
    best_overrides: str
    mlflow_run_id: Optional[str]
    tracking_uri: Optional[str]
    state_uri: str
    resumed: bool
    wall_s: float
    registered: Optional[str] = None  # training sweeps: models:/NAME/VERSION of the best trial (alias best)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else getattr(obj, part)
    return obj


def base_values(experiment: Any, keys: list[str]) -> dict[str, Any]:
    """The base experiment's value of each searched key (the `include_base` trial)."""
    values = {}
    for key in keys:
        root, rest = key.split(".", 1)
        value = _get(experiment.model if root == "model" else getattr(experiment.platform, root), rest)
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


def run_sweep(sweep: Any, sweep_dir: Path, log: Callable[[str], None] = print, ray_address: Optional[str] = None,
              tracking_uri: Optional[str] = None, worker_env: Optional[dict[str, str]] = None,
              sweep_text: str = "") -> SweepSummary:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.mlflow_runs import MlflowRun, git_info
    from pipelines.ray_runtime import connect, keep_credentials_out_of_tune_trials
    from pipelines.train.job import ray_storage

    started = time.time()
    keys = list(sweep.search_space)
    metric = sweep.resolved_metric
    if sweep.kind == "tracker":
        from pipelines.tune import tracker

        experiment = tracker.check_cache(sweep).experiment
        trainable = tracker.tracker_trainable(sweep)
        scheduler = FIFOScheduler()  # one report per trial: nothing to stop early

        def finished(metrics: dict) -> bool:
            return int(metrics.get("training_iteration", 0)) >= 1
    else:
        from pipelines.tune import training

        plan = training.prepare(sweep, sweep_dir, log, tracking_uri)
        experiment, finished = plan.experiment, plan.finished
        # stop_last_trials=False: a trial that reaches the last validation ends on its own (its run is
        # then closed, its model logged); ASHA only stops trials at the earlier rungs.
        scheduler = (ASHAScheduler(max_t=plan.max_reports, grace_period=sweep.scheduler.grace_period,
                                   reduction_factor=sweep.scheduler.reduction_factor, stop_last_trials=False)
                     if sweep.scheduler.type == "asha" else FIFOScheduler())
    root = sweep.storage_root if storage.is_remote(sweep.storage_root) else os.path.abspath(sweep.storage_root)
    state_uri = storage.join(root, sweep.name)
    connect(ray_address, log=log)
    keep_credentials_out_of_tune_trials()

    # The MLflow parent run, reattached by a resumed driver.
    state_file = storage.join(state_uri, STATE_FILE)
    try:
        state = storage.read_json(state_file)
    except storage.StorageNotFound:
        state = {}
    mlflow_run = MlflowRun(tracking_uri or experiment.tracking.tracking_uri)
    mlflow_experiment = experiment.tracking.experiment_name or experiment.name
    resumed = bool(state.get("mlflow_run_id")) and state.get("tracking_uri") == mlflow_run.tracking_uri
    if resumed:
        mlflow_run.start(mlflow_experiment, run_id=state["mlflow_run_id"])
        log(f"resuming sweep {sweep.name}: MLflow parent run {mlflow_run.run_id}")
    else:
        mlflow_run.start(mlflow_experiment, run_name=f"sweep-{sweep.name}",
                         tags={"ctvis.job": f"{sweep.kind}-sweep", "sweep.name": sweep.name, **git_info()})
        mlflow_run.log_params({"sweep.kind": sweep.kind, "sweep.metric": metric, "sweep.mode": sweep.mode,
                               "sweep.num_samples": sweep.num_samples, "sweep.keys": ",".join(keys),
                               **({"sweep.cache": sweep.cache, "sweep.split": sweep.split} if sweep.cache else {}),
                               **({"sweep.base": sweep.base} if sweep.base else {})})
        if sweep_text:
            mlflow_run.log_text(sweep_text, "sweep/sweep.yaml")
        storage.write_json(state_file, {"mlflow_run_id": mlflow_run.run_id, "tracking_uri": mlflow_run.tracking_uri,
                                        "created_at": time.time()}, indent=1)
    if sweep.kind == "training":
        plan.bind_parent(mlflow_run.run_id, mlflow_run.tracking_uri)
        trainable = plan.trainable

    try:
        storage_path, filesystem = ray_storage(root)
        tune_path = f"{storage_path.rstrip('/')}/{sweep.name}"
        param_space = {key: domain.to_tune() for key, domain in sweep.search_space.items()}
        if tune.Tuner.can_restore(tune_path, storage_filesystem=filesystem):
            log(f"restoring the Tune experiment at {storage.redact(state_uri)}: finished trials are kept")
            tuner = tune.Tuner.restore(tune_path, trainable, resume_errored=True, param_space=param_space,
                                       storage_filesystem=filesystem)
        else:
            points = [base_values(experiment, keys)] if sweep.include_base else None
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                # The base point is a sample of its own (it fixes every key, grid ones included).
                tune_config=tune.TuneConfig(
                    metric=metric, mode=sweep.mode, num_samples=sweep.num_samples + (1 if points else 0),
                    scheduler=scheduler, reuse_actors=sweep.kind == "tracker",
                    search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=sweep.seed,
                                                     max_concurrent=sweep.max_concurrent_trials)),
                run_config=tune.RunConfig(name=sweep.name, storage_path=storage_path, storage_filesystem=filesystem,
                                          failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                          verbose=0),
            )
        grid = tuner.fit()
        rows = _rows(grid, keys, metric, finished)
        best = _best(rows, metric, sweep.mode)
        from pipelines.tune.config import trial_overrides

        best_overrides = " ".join(trial_overrides({key: best[key] for key in keys})) if best else ""
        registered = None
        if sweep.kind == "training":
            registered = plan.finish(rows, best, mlflow_run, log)
        _log_parent(mlflow_run, sweep, rows, keys, metric, best, best_overrides)
        mlflow_run.end("FINISHED")
    except BaseException:
        mlflow_run.end("FAILED")
        raise
    return SweepSummary(sweep.name, sweep.kind, metric, rows, best, best_overrides, mlflow_run.run_id,
                        storage.redact(mlflow_run.tracking_uri), storage.redact(state_uri), resumed,
                        time.time() - started, registered)


def _rows(grid: Any, keys: list[str], metric: str, finished: Callable[[dict], bool]) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        reports = int(metrics.get("training_iteration", 0))
        if result.error is not None:
            status = "failed"
        elif finished(metrics):
            status = "finished"
        else:
            status = "stopped early"
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name, "status": status,
               "reports": reports, **{key: config.get(key) for key in keys}}
        kept = {metric, "AP", "AP50", "AP75", "AR1", "AR10", "step", "loss", "trial_s"}
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (name.startswith("val/") or name in kept):
                row[name] = value
        if result.error is not None:
            row["error"] = str(result.error).strip().splitlines()[-1][:300]
        rows.append(row)
    return sorted(rows, key=lambda row: str(row["trial_id"]))


def _best(rows: list[dict[str, Any]], metric: str, mode: str) -> Optional[dict[str, Any]]:
    scored = [row for row in rows if row["status"] != "failed" and isinstance(row.get(metric), (int, float))
              and not math.isnan(row[metric])]
    # Trials stopped early never reached the end: the best is among those that did when any did.
    finished = [row for row in scored if row["status"] == "finished"] or scored
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda row: row[metric])


def _log_parent(mlflow_run: Any, sweep: Any, rows: list[dict[str, Any]], keys: list[str], metric: str,
                best: Optional[dict[str, Any]], best_overrides: str) -> None:
    from pipelines.tune.report import metric_plots, trials_csv

    columns = ["trial_id", "status", "reports", *keys, metric] + sorted(
        {name for row in rows for name in row} - {"trial_id", "status", "reports", metric, *keys})
    mlflow_run.log_text(trials_csv(rows, columns), "sweep/trials.csv")
    mlflow_run.log_bytes(metric_plots(rows, keys, metric, f"sweep {sweep.name}: {metric} ({sweep.mode})"),
                         "sweep/plots.png")
    counts = {status: sum(row["status"] == status for row in rows) for status in ("finished", "stopped early", "failed")}
    mlflow_run.log_metrics({f"trials_{status.replace(' ', '_')}": count for status, count in counts.items()}, step=0)
    if best is not None:
        mlflow_run.log_metrics({f"best_{metric.replace('/', '_')}": best[metric]}, step=0)
        mlflow_run.set_tags({"sweep.best_trial": best["trial_id"], "sweep.best_overrides": best_overrides})
        mlflow_run.log_text(best_overrides + "\n", "sweep/best_overrides.txt")
        mlflow_run.log_text(json.dumps(best, indent=1, default=str), "sweep/best_trial.json")
