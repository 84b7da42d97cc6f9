"""`ctvis zoo list | import ROW --weights FILE_OR_URI | show ROW`: the published CTVIS models and the
MLflow registry.

``list`` prints the published rows (figures from experiments/zoo/published.yaml) and whether each is imported
in the registry; ``import`` registers a row's official ``.pth`` as a pyfunc model with alias
``published``; ``show`` prints a row's registry entry. Top-level imports stay in the standard library.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow registry (default: MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    sub = parser.add_subparsers(dest="zoo_command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="the published rows, with their figures and registry status")
    importer = sub.add_parser("import", help="register a row's official weights (pyfunc, alias published)")
    importer.add_argument("row", help="a row name from `ctvis zoo list`, e.g. ctvis_r50_ytvis19")
    importer.add_argument("--weights", required=True, help="the official .pth (local path or s3:// URI)")
    importer.add_argument("--allow-partial", action="store_true",
                          help="register even when the file does not fill the model completely")
    shower = sub.add_parser("show", help="a row's registry entry")
    shower.add_argument("row")


def _list(zoo, tracking_uri: str) -> None:
    from pipelines.zoo.registry import published_version

    keys = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_S", "AP_L")
    print(f"{'row':<21} {'backbone':<8} {'benchmark':<17} {'queries':>7} "
          + "".join(f"{k:>6}" for k in keys) + "  registry")
    for row in zoo.rows:
        version = published_version(tracking_uri, row.name)
        figures = "".join(f"{row.metrics[k]:>6.1f}" if k in row.metrics else f"{'-':>6}" for k in keys)
        print(f"{row.name:<21} {row.backbone:<8} {row.benchmark:<17} {row.queries:>7} {figures}  "
              + (f"v{version} @published" if version else "not imported"))
    print(f"\nexperiment YAML: experiments/<row>.yaml; weights: {zoo.weights_folder} (all rows); "
          f"no CodaLab submission files were published")
    for row in zoo.rows:
        if row.checkpoint_metrics:
            print(f"{row.name}: the released checkpoint's README lists "
                  + " / ".join(f"{k} {v:.1f}" for k, v in row.checkpoint_metrics.items()))
        if row.same_weights_as:
            print(f"{row.name}: the weights of {row.same_weights_as}")
    print(f"figures: {zoo.source}")


def _show(row, tracking_uri: str) -> int:
    from pipelines import storage
    from pipelines.mlflow_runs import get_model_version
    from pipelines.zoo.registry import registered_versions

    versions = registered_versions(tracking_uri, row.name)
    print(f"{row.name}: CTVIS {row.backbone} ({row.queries} queries) on {row.benchmark}; published "
          f"{row.metrics_text()}; experiments/{row.experiment}")
    if not versions:
        print(f"not in the registry at {storage.redact(tracking_uri)}: ctvis zoo import {row.name} --weights FILE")
        return 1
    for version in versions:
        info = get_model_version(row.name, version=version.version, tracking_uri=tracking_uri)
        aliases = f" @{', @'.join(info.aliases)}" if info.aliases else ""
        print(f"  version {info.version}{aliases}: models:/{row.name}/{info.version}")
        print(f"    {info.description}")
        print("    tags: " + ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items())))
        print(f"    source: {info.source}  run: {info.run_id}")
    return 0


def run(args: argparse.Namespace) -> int:
    from pipelines.mlflow_runs import resolve_tracking_uri
    from pipelines.weights import WeightsError
    from pipelines.zoo.rows import ZooError, load_zoo

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        zoo = load_zoo()
        if args.zoo_command == "list":
            _list(zoo, tracking_uri)
            return 0
        row = zoo.row(args.row)
        if args.zoo_command == "show":
            return _show(row, tracking_uri)
        from pipelines.zoo.registry import import_row

        result = import_row(row, args.weights, tracking_uri, args.allow_partial,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ZooError, WeightsError) as error:
        print(f"ctvis zoo: error: {error}", file=sys.stderr)
        return 2
    state = "registered" if result.created else "already registered"
    print(f"{row.name}: {state} as models:/{row.name}/{result.version.version} "
          f"(models:/{row.name}@published)")
    return 0
