"""`ctvis tune SWEEP.yaml [key.sub=value ...]`: a Ray Tune sweep (training-time or tracker).

A training sweep runs one `ctvis train` job per trial (Ray Train, checkpoints, a nested MLflow run),
reports validation AP to Tune at each ``train.eval_period`` and stops bad trials early (ASHA); the
best trial's model is registered under the sweep's name with alias ``best``. A tracker sweep searches
``model.tracker.*`` / ``model.inference.*`` on an output cache of ``ctvis predict --cache-outputs``:
tracker + post-processing + metrics per trial, no network. Running the same command again after an
interruption resumes the sweep. Top-level imports stay in the standard library.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("sweep", help="sweep YAML (e.g. experiments/sweeps/ctcl_tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="overrides of the sweep file, e.g. num_samples=8 cache=s3://bucket/cache")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the experiment's, or ./mlruns)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.config import ConfigError
    from pipelines.inference.cache import CacheError
    from pipelines.ray_runtime import ResourceError
    from pipelines.train.preflight import PreflightError
    from pipelines.tune.config import load_sweep
    from pipelines.tune.sweep import run_sweep
    from pipelines.tune.tracker import TrackerSweepError

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        sweep, sweep_dir = load_sweep(args.sweep, args.overrides)
        summary = run_sweep(sweep, sweep_dir, log, ray_address=args.ray_address, tracking_uri=args.tracking_uri,
                            sweep_text=Path(args.sweep).read_text())
    except (ConfigError, CacheError, TrackerSweepError, PreflightError, ResourceError) as error:
        print(f"ctvis tune: error: {error}", file=sys.stderr)
        return 2
    counts = {status: sum(row["status"] == status for row in summary.trials)
              for status in ("finished", "stopped early", "failed")}
    print(f"sweep {summary.name} ({summary.kind}): {len(summary.trials)} trials, "
          + ", ".join(f"{count} {status}" for status, count in counts.items()) + f", {summary.wall_s:.0f} s")
    for row in summary.trials:
        values = " ".join(f"{key.rsplit('.', 1)[-1]}={row.get(key)}" for key in row if key.startswith(("model.", "train.", "data.")))
        score = row.get(summary.metric)
        print(f"  {row['trial_id']:<24} {row['status']:<14} {summary.metric} "
              f"{score if score is None else f'{score:.2f}'}  {values}")
    if summary.best is not None:
        print(f"best: {summary.metric} {summary.best[summary.metric]:.2f} with {summary.best_overrides}")
    if summary.registered:
        print(f"best model registered: {summary.registered} (alias best)")
    print(f"MLflow parent run {summary.mlflow_run_id} at {summary.tracking_uri}; Tune state in {summary.state_uri}")
    return 0
