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
                        help="Ray cluster address (default: RAY_ADDRESS, the job's cluster, or a local Ray on 127.0.0.1)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="continue an existing run although its config changed (the change is recorded in the "
                             "MLflow run); without it a changed config is an error naming the keys")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError, load_experiment

    try:
        experiment = load_experiment(args.experiment, args.overrides)
        for note in experiment.notes:
            print(f"ctvis train: note: {note}", file=sys.stderr, flush=True)
    except ConfigError as exc:
        print(f"ctvis train: error: {exc}", file=sys.stderr)
        return 2
    from pipelines.ray_runtime import ResourceError
    from pipelines.train.job import format_summary, run_training
    from pipelines.train.preflight import PreflightError

    try:
        summary = run_training(experiment, log=lambda line: print(line, file=sys.stderr, flush=True),
                               ray_address=args.ray_address, resume_changed=args.resume_changed)
    except (PreflightError, ResourceError) as exc:
        print(f"ctvis train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict()) if args.json else format_summary(summary), flush=True)
    return 0
