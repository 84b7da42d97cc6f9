"""Training-time sweeps: one `ctvis train` job per trial, validation AP reported to Tune.

A trial is a Tune function trainable that runs `pipelines.train.job.run_training` (the same job as
`ctvis train`: preflight, Ray Train workers, checkpoints, its MLflow run, nested under the sweep's
parent run) with the trial's sampled values as overrides; Ray Train's `TuneReportCallback` forwards
each checkpoint report (``step``, ``loss``, ``val/*``) to Tune, so ASHA can stop a trial at any
validation. Checkpoints are made at every validation (``train.checkpoint_period`` follows
``train.eval_period``), so every report carries the metric. A trial restarted by a resumed sweep
continues its Ray Train run from its last checkpoint; one whose run had finished reports its final
metrics again without training.

At the end the trials Tune stopped early have their MLflow runs marked KILLED; the best finished
trial's model is registered under the sweep's name with alias ``best``, and its settings are written
as an experiment YAML that `ctvis train` takes as it is.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional



def training_trial(config: dict[str, Any], base_yaml: str, source: str, sweep_name: str, parent_run_id: str,
                   tracking_uri: str, worker_env: Optional[dict[str, str]]) -> None:
    """Tune function trainable: one training run with the sampled values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.config import build_experiment, parse_yaml
    from pipelines.train import state
    from pipelines.train.job import run_training
    from pipelines.tune.config import trial_overrides

    run_name = trial_run_name(sweep_name, tune.get_context().get_trial_id())
    # JSON-quoted: a run id of digits and an "e" would otherwise read as a number.
    experiment = build_experiment(parse_yaml(base_yaml, source), source, trial_overrides(config) + [
        f"train.run_name={json.dumps(run_name)}", "tracking.register_model=false",
        f"tracking.parent_run_id={json.dumps(parent_run_id)}", f"tracking.tracking_uri={json.dumps(tracking_uri)}"])
    info = state.read_run_info(experiment.storage.runs_root, run_name) or {}
    if info.get("finished"):  # trained before the sweep's driver died: report, do not train again
        tune.report({"step": info.get("final_step", 0), "loss": info.get("final_loss", float("nan")),
                     **info.get("val_metrics", {})})
        return
    run_training(experiment, worker_env=worker_env, log=print, callbacks=[TuneReportCallback()])


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


@dataclasses.dataclass
class TrainingPlan:
    sweep: Any
    experiment: Any  # the base experiment with the sweep's fixed overrides, paths absolute
    base_yaml: str  # its YAML (fixed overrides included): each trial adds the sampled values
    source: str
    max_reports: int
    max_iter: int
    worker_env: Optional[dict[str, str]] = None
    trainable: Any = None

    def bind_parent(self, parent_run_id: str, tracking_uri: str) -> None:
        from ray import tune

        trainable = tune.with_parameters(training_trial, base_yaml=self.base_yaml, source=self.source,
                                         sweep_name=self.sweep.name, parent_run_id=parent_run_id,
                                         tracking_uri=tracking_uri, worker_env=self.worker_env)
        # The trial itself only drives its Ray Train run: the workers ask for their own resources.
        self.trainable = tune.with_resources(trainable, {"CPU": 0.01})

    def finished(self, metrics: dict[str, Any]) -> bool:
        return int(metrics.get("step", 0)) >= self.max_iter

    def finish(self, rows: list[dict[str, Any]], best: Optional[dict[str, Any]], mlflow_run: Any,
               log: Callable[[str], None]) -> Optional[str]:
        """Mark early-stopped trials' runs KILLED, register the best trial's model (alias best) and log
        its experiment YAML on the parent run; returns models:/NAME/VERSION or None."""
        from pipelines.config import build_experiment, parse_yaml
        from pipelines.mlflow_runs import register_run_model
        from pipelines.train import state
        from pipelines.tune.config import trial_overrides

        runs_root = self.experiment.storage.runs_root
        client = mlflow_run.client
        for row in rows:
            info = state.read_run_info(runs_root, trial_run_name(self.sweep.name, row["trial_id"])) or {}
            row["mlflow_run_id"] = info.get("mlflow_run_id", "")
            if row["status"] != "finished" and row["mlflow_run_id"]:
                client.set_tag(row["mlflow_run_id"], "sweep.status", row["status"])
                if row["status"] == "stopped early":
                    # Stopped by the scheduler, not broken (the trial's run may have ended RUNNING or
                    # FAILED, depending on where the stop reached it).
                    client.set_terminated(row["mlflow_run_id"], status="KILLED")
        if best is None:
            log("no trial finished: nothing to register")
            return None
        keys = list(self.sweep.search_space)
        best_experiment = build_experiment(parse_yaml(self.base_yaml, self.source), self.source,
                                           trial_overrides({key: best[key] for key in keys}))
        mlflow_run.log_text(best_experiment.to_yaml(), "sweep/best_experiment.yaml")
        if not best.get("mlflow_run_id"):
            log(f"best trial {best['trial_id']}: its MLflow run is unknown, not registered")
            return None
        version = register_run_model(
            mlflow_run.tracking_uri, best["mlflow_run_id"], self.sweep.name, "model", aliases=["best"],
            description=f"sweep {self.sweep.name}: best trial {best['trial_id']} "
                        f"({self.sweep.resolved_metric} {best[self.sweep.resolved_metric]:.2f})",
            tags={**_zoo_tags(best_experiment, best), "sweep": self.sweep.name, "trial_id": best["trial_id"]})
        log(f"best trial {best['trial_id']} registered as models:/{self.sweep.name}/{version.version} (alias best)")
        return f"models:/{self.sweep.name}/{version.version}"


def _zoo_tags(experiment: Any, row: dict[str, Any]) -> dict[str, str]:
    """The registry tags every CTVIS model carries (as zoo imports and `ctvis train`)."""
    from pipelines.zoo.registry import zoo_tags

    network = experiment.model.network
    metrics = {key.split("/", 1)[-1]: float(value) for key, value in row.items()
               if key.split("/", 1)[-1] in ("AP", "AP50", "AP75", "AR1", "AR10", "AP_S", "AP_L")
               and isinstance(value, (int, float))}
    return zoo_tags(network.backbone.kind, experiment.data.val.name if experiment.data.val else "none",
                    network.transformer_decoder.num_queries, metrics, "sweep")


def prepare(sweep: Any, sweep_dir: Path, log: Callable[[str], None], tracking_uri: Optional[str]) -> TrainingPlan:
    """The base experiment, checked as `ctvis train` checks it, and every searched key validated."""
    from pipelines.config import ConfigError, load_experiment
    from pipelines.train.job import prepare as prepare_training
    from pipelines.tune.config import check_keys

    base = Path(sweep.base)
    if not base.is_absolute() and (sweep_dir / base).is_file():
        base = (sweep_dir / base).resolve()
    source = str(base)
    check_keys(sweep, lambda overrides: load_experiment(base, overrides), source)
    experiment = load_experiment(base, list(sweep.overrides))
    period = experiment.train.eval_period
    if not period or experiment.data.val is None:
        raise ConfigError(f"{source}: a training sweep reports validation {sweep.resolved_metric} to Tune: set "
                          f"train.eval_period > 0 and data.val (in the base or the sweep's overrides)")
    fixed = list(sweep.overrides)
    if experiment.train.checkpoint_period != period:
        log(f"note: train.checkpoint_period {experiment.train.checkpoint_period} -> {period} (= train.eval_period: "
            f"every validation is a report to Tune)")
        fixed.append(f"train.checkpoint_period={period}")
        experiment = load_experiment(base, fixed)
    if tracking_uri:
        fixed.append(f"tracking.tracking_uri={json.dumps(tracking_uri)}")
        experiment = load_experiment(base, fixed)
    experiment = prepare_training(experiment, log)  # shards, batch, paths absolute, classes from the data
    max_iter = experiment.train.schedule.max_iter
    max_reports = max_iter // period + (1 if max_iter % period else 0)
    return TrainingPlan(sweep, experiment, experiment.to_yaml(), f"{source} (sweep {sweep.name})", max_reports,
                        max_iter)
