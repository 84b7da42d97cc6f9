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
    "predict": ("pipelines.inference.command", "Run a model over a split on Ray Data: results JSON, CodaLab zip, metrics, output cache."),
    "zoo": ("pipelines.zoo.command", "The published CTVIS models: list them, import official weights into the MLflow registry, show entries."),
    "infer": ("pipelines.inference.infer_command", "Run a model on your video (mp4 / frames, online, bounded memory): overlay mp4 + tracks.json."),
    "tune": ("pipelines.tune.command", "Ray Tune sweeps: training-time (ASHA, nested MLflow runs) or tracker settings on an output cache."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctvis",
        description="CTVIS platform: train, evaluate and ship online video instance segmentation models.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    verb_parsers: dict[str, argparse.ArgumentParser] = {}
    for verb, (module_name, summary) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        # Importing the module only to attach its arguments would defeat lazy imports, so every
        # verb module keeps its top-level imports to the standard library.
        module = importlib.import_module(module_name)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_verb_module=module_name)
        verb_parsers[verb] = verb_parser
    parser.set_defaults(_verb_parsers=verb_parsers)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The arguments, with options and positionals in any order: `ctvis predict MODEL SPLIT --output
    OUT key=value` puts the trailing overrides with the others (plain argparse stops a positional
    list at the first option)."""
    args, extras = parser.parse_known_args(argv)
    if extras and args.verb is not None:
        verb = args.verb
        try:
            args = args._verb_parsers[verb].parse_intermixed_args(argv[argv.index(verb) + 1:])
        except TypeError:  # a verb with sub-commands: argparse cannot intermix those
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.verb = verb
    return args


_terminated_by: list[int] = []  # the signal that ended the run, if one did


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    """SIGTERM (`ray job stop`, `kill`) unwinds like Ctrl-C, so that runs are closed cleanly."""
    _terminated_by.append(signum)
    raise KeyboardInterrupt


# Errors that are the user's environment, not a bug: one line on stderr, exit status 2.
# (botocore's errors are matched by name so that this module imports nothing heavy.)
_ENVIRONMENT_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "EndpointConnectionError",
                       "ConnectTimeoutError", "ReadTimeoutError", "ClientError", "NoRegionError",
                       "ProfileNotFound", "InvalidEndpointError"}


def _is_environment_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(cls.__name__ in _ENVIRONMENT_ERRORS for cls in type(error).__mro__)


def main(argv: list[str] | None = None) -> int:
    from pipelines import redaction

    argv = sys.argv[1:] if argv is None else list(argv)
    # Nothing this process prints may show a secret, including secrets given on its command line.
    for token in argv:
        redaction.redact_override(token)
    restore_streams = redaction.install_redacting_streams()
    try:
        return _run_verb(argv)
    finally:
        restore_streams()


def _run_verb(argv: list[str]) -> int:
    from pipelines import redaction

    parser = build_parser()
    args = parse(parser, argv)
    if args.verb is None:
        parser.print_help()
        return 0
    import signal
    import threading

    previous_handler = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    name = f"ctvis {args.verb}" + (f" {args.data_command}" if getattr(args, "data_command", None) else "")
    module = importlib.import_module(args._verb_module)
    _terminated_by.clear()
    try:
        return int(module.run(args) or 0)
    except (KeyboardInterrupt, SystemExit) as stop:
        # A SystemExit is ours only after SIGTERM (Ray turns a signal inside a blocking ray.get into one).
        if isinstance(stop, SystemExit) and not _terminated_by:
            raise
        word, code = ("terminated", 128 + _terminated_by[-1]) if _terminated_by else ("interrupted", 130)
        print(f"{name}: {word}", file=sys.stderr, flush=True)
        return code
    except Exception as error:  # noqa: BLE001 - only the environment's errors are turned into one line
        if not _is_environment_error(error):
            raise
        print(f"{name}: error: {redaction.redact(error)}", file=sys.stderr, flush=True)
        return 2
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
