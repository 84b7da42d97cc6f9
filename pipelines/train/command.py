"""`ctvis train EXPERIMENT.yaml [key=value ...]`: train, validate, track and register a CTVIS model.

Runs on the Ray cluster it finds (``RAY_ADDRESS``, or the cluster of a `ray job submit` job), else on a
local Ray started in-process. Running the same experiment again (same run name and
``storage.runs_root``) continues a run whose driver died, from its last checkpoint, into the same
MLflow run. Top-level imports stay in the standard library (the CLI builds its parser without torch
or ray).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML (e.g. experiments/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. train.schedule.max_iter=100 compute.num_workers=2")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, the job's cluster, or a local Ray)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError, load_experiment

    try:
        experiment = load_experiment(args.experiment, args.overrides)
    except ConfigError as exc:
        print(f"ctvis train: error: {exc}", file=sys.stderr)
        return 2
    from pipelines.train.job import format_summary, preflight, run_training

    try:
        preflight(experiment)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ctvis train: error: {exc}", file=sys.stderr)
        return 2
    import ray

    if args.ray_address:
        ray.init(address=args.ray_address)
    summary = run_training(experiment, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(summary.as_dict()) if args.json else format_summary(summary), flush=True)
    return 0
