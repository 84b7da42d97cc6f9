"""Benchmark: the cost of one tracker-sweep trial (tracker + post-processing + official metrics on an
output cache) against running inference over the same split, side by side in one run.

    /work/main/.venv/bin/python benchmarks/bench_tune_tracker.py [--videos 16] [--trials 6]

A synthetic split (``--videos`` videos of 24-32 frames at 192x256) and the tiny model (seeded) at the
frames' size. Inference: `ctvis predict --cache-outputs` on one Ray worker, counted as the actor's
time on the videos (network, tracker, post-processing, RLE; no actor start-up). A trial:
`tracker.evaluate_tracker_settings` in this process on one thread, cold (reading the cache and the
ground truth) and warm (what a reused Tune trial actor pays; the minimum over ``--trials`` settings).
The issue's target is a warm trial at most 1/20 of the inference. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.bench_predict import synthetic_split_and_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()

    import ray
    import torch

    from pipelines.inference.job import PredictOptions, predict_split
    from pipelines.tune import tracker

    root = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    split, model = synthetic_split_and_model(root, args.videos, (24, 32), (192, 256))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             log_to_driver=False)
    cache = str(root / "cache")
    summary = predict_split(model, split, PredictOptions(output=str(root / "predict"), cache_outputs=cache, workers=1,
                                                         overlays=0, tracking_uri=f"sqlite:///{root / 'm.db'}"),
                            log=lambda line: None)
    ray.shutdown()

    torch.set_num_threads(1)
    started = time.perf_counter()
    tracker.evaluate_tracker_settings(cache, split, [])
    cold = time.perf_counter() - started
    settings = [[], ["model.tracker.match_score_thr=0.5"], ["model.tracker.embed_type=\"momentum\""],
                ["model.tracker.mask_nms_thr=0.5"], ["model.inference.num_topk=5"], ["model.tracker.num_dead_frames=5"]]
    warm = []
    for index in range(args.trials):
        started = time.perf_counter()
        tracker.evaluate_tracker_settings(cache, split, settings[index % len(settings)])
        warm.append(time.perf_counter() - started)
    figures = {"device": "cpu", "videos": args.videos, "frames": summary.num_videos and int(sum(
        json.loads((root / "shards" / "manifest.json").read_text())["video_index"]["length"])),
        "inference_video_s": round(summary.video_s, 3), "inference_work_s": round(summary.work_s, 3),
        "trial_cold_s": round(cold, 3), "trial_warm_s": round(min(warm), 3),
        "warm_trial_over_inference": round(min(warm) / summary.video_s, 4),
        "cold_trial_over_inference": round(cold / summary.video_s, 4),
        "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
