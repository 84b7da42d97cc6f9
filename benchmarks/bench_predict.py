"""Benchmark: `ctvis predict` throughput on 1 vs 2 Ray workers, and the cost of a `--from-cache` re-run
(tracker + post-processing only) against the full run that wrote the cache, side by side in one run.

    /work/main/.venv/bin/python benchmarks/bench_predict.py [--videos 12] [--repeats 2]

A synthetic split (``--videos`` videos of ``--frames`` 24-32 frames at ``--size`` 192x256, ingested to
local shards) and the tiny model (seeded, untrained: the work per video is the same as for trained
weights) at the frames' own size. Each configuration runs ``--repeats`` times, alternating, each into a fresh output; the figures
are the minimum over the repeats of ``work_s`` (the Ray Data part, actor start-up included) and of
the wall time of `predict_split` (planning, merging, metrics and the MLflow run included), and
``actor_video_s``, the actors' time on the videos themselves (summed over actors). The
results of every run are asserted identical to the first full run's (the cached run and its replay
to each other). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_split_and_model(root: Path, videos: int, frames: tuple[int, int], size: tuple[int, int]):
    """A synthetic split ingested under `root` and the tiny model (seeded) at the frames' own size:
    (shards URI, model_source.ResolvedModel). Shared with bench_tune_tracker.py."""
    import torch

    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.data import catalog, synth
    from pipelines.data.ingest import IngestOptions, ingest
    from pipelines.inference.model_source import resolve_model
    from pipelines.weights import WEIGHTS_FORMAT

    height, width = size
    raw = synth.generate(str(root / "raw"), synth.SynthConfig(num_videos=videos, min_frames=frames[0],
                                                               max_frames=frames[1], height=height, width=width,
                                                               num_classes=3, seed=3))
    ingest(catalog.resolve_split("bench", annotations=raw["annotations"], frames_root=raw["frames_root"]),
           str(root / "shards"), IngestOptions(executor="local"))
    experiment_file = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
    torch.manual_seed(0)
    weights = root / "model.pt"
    torch.save({"format": WEIGHTS_FORMAT, "model": build_model(load_experiment(experiment_file).model).state_dict()},
               weights)
    model = resolve_model(str(experiment_file), [f"model.weights={weights}", f"data.min_size_test={min(height, width)}",
                                                 f"data.max_size_test={max(height, width)}"])
    return str(root / "shards"), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, nargs=2, default=(24, 32), help="min and max frames per video")
    parser.add_argument("--size", type=int, nargs=2, default=(192, 256), help="frame height and width (= test size)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from pipelines.inference.job import PredictOptions, predict_split
    from pipelines.inference.model_source import model_from_cache

    root = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    split, model = synthetic_split_and_model(root, args.videos, tuple(args.frames), tuple(args.size))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             log_to_driver=False)
    base = PredictOptions(output="", overlays=0, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    counter = iter(range(10_000))

    def run(label: str, **changes):
        options = dataclasses.replace(base, output=str(root / f"out-{label}-{next(counter)}"), **changes)
        started = time.perf_counter()
        summary = predict_split(model if not options.from_cache else model_from_cache(options.from_cache),
                                split, options, log=lambda line: None)
        wall = time.perf_counter() - started
        return summary, wall, (Path(options.output) / "results.json").read_bytes()

    best: dict[str, dict[str, float]] = {}
    reference = cached_results = None
    cache = str(root / "cache")
    for repeat in range(args.repeats):
        for label, changes in (("workers_1", {"workers": 1}), ("workers_2", {"workers": 2}),
                               ("full_with_cache", {"workers": 1, "cache_outputs": cache if repeat == 0 else
                                                    str(root / f"cache-{repeat}")}),
                               ("from_cache", {"workers": 1, "from_cache": cache})):
            summary, wall, results = run(label, **changes)
            if label in ("workers_1", "workers_2"):
                reference = reference or results
                assert results == reference, label
            elif label == "full_with_cache":
                cached_results = cached_results or results
                assert results == cached_results
            else:
                assert results == cached_results, "the replay differs from the run that wrote the cache"
            entry = best.setdefault(label, {"work_s": float("inf"), "wall_s": float("inf"), "video_s": float("inf")})
            entry["work_s"] = min(entry["work_s"], summary.work_s)
            entry["wall_s"] = min(entry["wall_s"], wall)
            entry["video_s"] = min(entry["video_s"], summary.video_s)
    ray.shutdown()
    cache_bytes = sum(p.stat().st_size for p in (root / "cache" / "videos").glob("*.parquet"))
    figures = {
        "device": "cpu", "cpus": 2, "videos": args.videos, "frames": int(sum(json.loads(
            (root / "shards" / "manifest.json").read_text())["video_index"]["length"])), "repeats": args.repeats,
        **{label: {"work_s": round(v["work_s"], 2), "wall_s": round(v["wall_s"], 2),
                   "actor_video_s": round(v["video_s"], 2), "videos_per_s": round(args.videos / v["work_s"], 2)}
           for label, v in best.items()},
        "speedup_2_workers": round(best["workers_1"]["work_s"] / best["workers_2"]["work_s"], 2),
        # The per-video work alone (no actor start-up), and the whole Ray Data part.
        "from_cache_cost_vs_full_run_per_video": round(best["from_cache"]["video_s"] / best["full_with_cache"]["video_s"], 3),
        "from_cache_cost_vs_full_run_work": round(best["from_cache"]["work_s"] / best["full_with_cache"]["work_s"], 3),
        "cache_bytes_per_video": int(cache_bytes / args.videos),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
