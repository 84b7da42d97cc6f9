"""`ctvis data`: synthesise, ingest, inspect and export datasets.

  ctvis data synth OUT [--format ytvis|coco] [--videos N] [--frames MIN MAX] [--size H W] ...
  ctvis data ingest SPLIT OUT [--annotations URI --frames-root URI] [--datasets-root URI]
                    [--on-error fail|skip] [--shard-mb MB] [--executor ray|local]
  ctvis data inspect SHARDS          manifest summary, problem counts, shard checksums (--verify)
  ctvis data export SHARDS OUT.json  the ingested split back as YouTube-VIS JSON
  ctvis data splits                  the catalog's split names

Top-level imports stay in the standard library (the CLI builds its parser without torch or ray).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write a synthetic YouTube-VIS (or COCO) dataset to a URI")
    p.add_argument("output", help="output URI (local path or s3://bucket/prefix)")
    p.add_argument("--format", choices=["ytvis", "coco"], default="ytvis")
    p.add_argument("--videos", type=int, default=8, help="videos (images for --format coco)")
    p.add_argument("--frames", type=int, nargs=2, default=(8, 16), metavar=("MIN", "MAX"))
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--instances", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-id", type=int, default=1, help="id of the first video / image")
    p.add_argument("--jpeg-quality", type=int, default=90)

    p = sub.add_parser("ingest", help="turn a raw split into Parquet shards with a manifest")
    p.add_argument("split", help="catalog name (see `ctvis data splits`) or a name for a custom split")
    p.add_argument("output", help="URI of the shards directory")
    p.add_argument("--annotations", help="annotation JSON URI (custom split, or override the catalog's)")
    p.add_argument("--frames-root", help="frames root URI (custom split, or override the catalog's)")
    p.add_argument("--datasets-root", default="datasets", help="root of the catalog layout (default: datasets)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    p.add_argument("--shard-mb", type=float, default=128.0)
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--cpus-per-task", type=float, default=1.0)

    p = sub.add_parser("inspect", help="summarise an ingested split")
    p.add_argument("shards", help="URI of the shards directory")
    p.add_argument("--verify", action="store_true", help="re-read every shard and check its sha256")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    p = sub.add_parser("export", help="write an ingested split back as YouTube-VIS JSON")
    p.add_argument("shards")
    p.add_argument("output", help="URI of the JSON to write")

    sub.add_parser("splits", help="list the catalog's split names")


def run(args: argparse.Namespace) -> int:
    from pipelines.data.formats import DataFormatError

    try:
        return _COMMANDS[args.data_command](args)
    except (DataFormatError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"ctvis data {args.data_command}: error: {message}", file=sys.stderr)
        return 2


def _synth(args) -> int:
    from pipelines.data import synth

    cfg = synth.SynthConfig(
        format=args.format, num_videos=args.videos, min_frames=args.frames[0], max_frames=args.frames[1],
        height=args.size[0], width=args.size[1], num_classes=args.classes, min_instances=args.instances[0],
        max_instances=args.instances[1], seed=args.seed, jpeg_quality=args.jpeg_quality, start_video_id=args.start_id,
    )
    print(json.dumps(synth.generate(args.output, cfg)))
    return 0


def _ingest(args) -> int:
    from pipelines.data import catalog, ingest

    info = catalog.resolve_split(args.split, args.datasets_root, args.annotations, args.frames_root)
    if args.executor == "ray":
        from pipelines.ray_runtime import connect

        connect(args.ray_address, log_to_driver=False)  # RAY_ADDRESS, or a local Ray on 127.0.0.1 only

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    manifest = ingest.ingest(info, args.output, ingest.IngestOptions(
        on_error=args.on_error, shard_mb=args.shard_mb, executor=args.executor, cpus_per_task=args.cpus_per_task),
        log=progress)
    print(json.dumps(_summary(manifest)))
    return 0


def _summary(manifest: dict) -> dict:
    keys = ("split", "kind", "num_videos", "num_frames", "num_instances", "num_shards", "resumed_shards",
            "problem_counts", "notes")
    out = {k: manifest.get(k) for k in keys}
    out["categories"] = len(manifest.get("categories", []))
    return out


def _inspect(args) -> int:
    import hashlib

    from pipelines import storage
    from pipelines.data import shards

    manifest = shards.load_manifest(args.shards)
    summary = _summary(manifest.raw)
    if args.verify:
        bad = []
        for s in manifest.raw["shards"]:
            data = storage.read_bytes(storage.join(manifest.uri, s["path"]))
            if hashlib.sha256(data).hexdigest() != s["sha256"]:
                bad.append(s["path"])
        summary["checksum_mismatches"] = bad
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 1 if summary.get("checksum_mismatches") else 0


def _export(args) -> int:
    from pipelines import storage
    from pipelines.data import shards

    data = shards.export_ytvis_json(shards.load_manifest(args.shards))
    storage.write_json(args.output, data)
    print(json.dumps({"output": args.output, "videos": len(data["videos"]), "annotations": len(data["annotations"])}))
    return 0


def _splits(args) -> int:
    from pipelines.data import catalog

    print("\n".join(catalog.split_names()))
    return 0


_COMMANDS = {"synth": _synth, "ingest": _ingest, "inspect": _inspect, "export": _export, "splits": _splits}
