"""`ctvis config`: validate an experiment file and print its fully resolved config."""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Validate an experiment YAML (strictly: unknown keys, wrong types and out-of-range values are errors
naming the file and the dotted key), apply key.sub=value overrides, and print the fully resolved
config -- every default filled in -- exactly as training logs it to MLflow.

examples:
  ctvis config experiments/tiny.yaml
  ctvis config experiments/ctvis_r50_ytvis19.yaml train.optimizer.lr=5e-5 model.tracker.match_score_thr=0.4
  ctvis config experiments/ctvis_r50_ytvis19.yaml --format json
  ctvis config --list
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("experiment", nargs="?", help="path of an experiment YAML (e.g. experiments/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.optimizer.lr=2e-4")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    parser.add_argument("--hash", action="store_true", help="print only the resolved config's hash")
    parser.add_argument("--list", action="store_true", help="list the experiment files in ./experiments")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError, list_experiments, load_experiment

    if args.list:
        for path in list_experiments():
            print(path)
        return 0
    if not args.experiment:
        print("ctvis config: give an experiment file (or --list)", file=sys.stderr)
        return 2
    try:
        experiment = load_experiment(args.experiment, args.overrides)
    except ConfigError as exc:
        print(f"ctvis config: error: {exc}", file=sys.stderr)
        return 2
    for note in experiment.notes:
        print(f"ctvis config: note: {note}", file=sys.stderr)
    if args.hash:
        print(experiment.config_hash())
    elif args.format == "json":
        print(json.dumps(experiment.to_dict(), indent=2))
    else:
        print(experiment.to_yaml(), end="")
    return 0
