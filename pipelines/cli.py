"""The `ctvis` command: one verb per job.

Each verb lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
The modules are imported lazily, only for the verb that is run, so that start-up stays fast
(`ctvis eval` imports neither torch nor ray).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line description). Only verbs that work end to end are listed here.
VERBS: dict[str, tuple[str, str]] = {
    "config": ("pipelines.config_cmd", "Validate an experiment YAML and print its fully resolved config."),
    "eval": ("pipelines.evaluation.command", "Official YouTube-VIS / OVIS / YTVIS-2022 metrics of a results file."),
    "data": ("pipelines.data.cli", "Synthesise, ingest, inspect and export VIS datasets (YTVIS/OVIS/COCO, Parquet shards)."),
    "train": ("pipelines.train.command", "Train an experiment on Ray Train (checkpoints, resume, MLflow run, registered model)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctvis",
        description="CTVIS platform: train, evaluate and ship online video instance segmentation models.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, summary) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        # Importing the module only to attach its arguments would defeat lazy imports, so every
        # verb module keeps its top-level imports to the standard library.
        module = importlib.import_module(module_name)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_verb_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._verb_module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
