"""`ctvis predict MODEL SPLIT_SHARDS --output URI [key.sub=value ...]`: a model over a whole split.

MODEL: an experiment YAML with ``model.weights=URI``, a training checkpoint directory, or a
registered model ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``. SPLIT_SHARDS: the split as
`ctvis data ingest` wrote it (local or ``s3://``), with or without annotations. Writes
``results.json``, ``submission.zip`` and, with annotations, ``metrics.json`` and ``table.txt`` under
``--output``, and an MLflow run. ``--cache-outputs URI`` also stores the network outputs;
``ctvis predict --from-cache URI SPLIT_SHARDS --output URI2 [model.tracker.x=y ...]`` then re-runs
only the tracker and post-processing. Running the same command again after an interruption skips the
videos already done. Top-level imports stay in the standard library.
"""
from __future__ import annotations

import argparse
import re
import sys

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("inputs", nargs="+", metavar="MODEL SPLIT_SHARDS [key.sub=value]",
                        help="MODEL (omitted with --from-cache), the split's shards, then config overrides such as "
                             "model.weights=URI model.tracker.match_score_thr=0.4 data.min_size_test=480")
    parser.add_argument("--output", required=True, help="where results.json, submission.zip, metrics.json go")
    parser.add_argument("--benchmark", choices=("ytvis", "ovis", "ytvis2022"), default="ytvis",
                        help="the benchmark the split belongs to (metrics protocol, submission) (default: ytvis)")
    parser.add_argument("--cache-outputs", metavar="URI", help="also store the network outputs here (float16 masks)")
    parser.add_argument("--from-cache", metavar="URI",
                        help="re-run the tracker and post-processing from this output cache (no network)")
    parser.add_argument("--workers", type=int, default=1, help="Ray actors, each holding the model (default: 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default: 0, CPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default: 1)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="a video whose frames cannot be decoded: stop (default), or leave it out and list it in "
                             "metrics.json")
    parser.add_argument("--max-videos", type=int, default=None, help="only the first N videos of the split")
    parser.add_argument("--overlays", type=int, default=2, help="overlay strips of the first N videos in MLflow")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the experiment's, or ./mlruns)")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: predict-<experiment>)")


def split_overrides(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(positional arguments, ``key.sub=value`` overrides), each in the order given (`ctvis predict`
    and `ctvis infer`)."""
    return ([token for token in inputs if not _OVERRIDE.match(token)],
            [token for token in inputs if _OVERRIDE.match(token)])


def split_inputs(inputs: list[str], from_cache: bool) -> tuple[str | None, str, list[str]]:
    """(MODEL or None, SPLIT_SHARDS, overrides) from the positional arguments."""
    positional, overrides = split_overrides(inputs)
    expected = 1 if from_cache else 2
    if len(positional) != expected:
        usage = "SPLIT_SHARDS (the model comes from the cache)" if from_cache else "MODEL SPLIT_SHARDS"
        raise ValueError(f"expected {usage}, got {len(positional)} argument(s): {' '.join(positional) or '(none)'}")
    return (None if from_cache else positional[0]), positional[-1], overrides


def run(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError
    from pipelines.inference.cache import CacheError
    from pipelines.inference.job import PredictError, PredictOptions, predict_split
    from pipelines.inference.model_source import model_from_cache, resolve_model
    from pipelines.weights import WeightsError

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        model_arg, split, overrides = split_inputs(args.inputs, bool(args.from_cache))
        if args.from_cache:
            model = model_from_cache(args.from_cache, overrides)
        else:
            model = resolve_model(model_arg, overrides, args.tracking_uri)
        for note in model.experiment.notes:
            log(f"ctvis predict: note: {note}")
        options = PredictOptions(
            output=args.output, benchmark=args.benchmark, cache_outputs=args.cache_outputs, from_cache=args.from_cache,
            workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            on_error=args.on_error, max_videos=args.max_videos, overlays=args.overlays, ray_address=args.ray_address,
            tracking_uri=args.tracking_uri, run_name=args.run_name)
        summary = predict_split(model, split, options, log=log)
    except (ValueError, ConfigError, WeightsError, PredictError, CacheError) as error:
        print(f"ctvis predict: error: {error}", file=sys.stderr)
        return 2
    print(f"{summary.num_videos} videos: {summary.predicted} predicted ({summary.videos_per_s:.2f} videos/s), "
          f"{summary.reused} reused, {len(summary.failed)} failed; results in {summary.output}")
    return 0
