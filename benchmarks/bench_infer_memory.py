"""Benchmark: peak memory of `ctvis infer` on a short and a long generated video, against the
whole-video path (`CTVISModel.infer_video` on all the frames at once, what `ctvis predict` runs
per video), measured side by side in one run.

    /work/main/.venv/bin/python benchmarks/bench_infer_memory.py [--frames 100 2000] [--size 180 320]

Each video is an H.264 mp4 generated here (moving textured shapes, 6 fps). Each measurement is a
fresh process (its peak RSS, ``ru_maxrss`` from ``wait4``): `ctvis infer` with the tiny model
(seeded, untrained) and its default test size, writing the overlay mp4 and tracks.json; then the
same decoded, resized frames through ``infer_video``. Prints one JSON line: peak RSS in MB per
length for both paths, and the ratio long/short for each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WHOLE_VIDEO = """
import sys, numpy as np, torch
from models.model import build_model
from pipelines.config import load_experiment
from pipelines.data.augment import shortest_edge_size
from pipelines.inference.videos import resize_test_frame
from pipelines.inference.user_video import open_video
from pipelines.weights import WeightsSource, load_weights
experiment = load_experiment(sys.argv[1])
model = build_model(experiment.model)
load_weights(model, WeightsSource(sys.argv[2], sys.argv[2]))
with open_video(sys.argv[3]) as video:
    frames = [d.image for d in video.frames()]
size = shortest_edge_size(*frames[0].shape[:2], experiment.data.min_size_test, experiment.data.max_size_test)
resized = torch.from_numpy(np.stack([resize_test_frame(f, size) for f in frames]))
original = frames[0].shape[:2]
del frames
instances = model.eval().infer_video(resized, output_size=original)
print(len(instances))
"""


def peak_rss_mb(command: list[str]) -> float:
    """Run `command`; its peak resident set size in MB (Linux reports ru_maxrss in KB)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--size", type=int, nargs=2, default=[180, 320], metavar=("H", "W"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from fractions import Fraction

    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.inference.overlay import Mp4Writer
    from pipelines.weights import WEIGHTS_FORMAT
    from tests.test_infer import synthetic_frame

    experiment_path = ROOT / "experiments" / "tiny.yaml"
    results: dict = {"size": args.size, "frames": args.frames, "infer_peak_rss_mb": [], "whole_video_peak_rss_mb": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        weights = tmp / "model.pt"
        torch.save({"format": WEIGHTS_FORMAT, "model": build_model(load_experiment(experiment_path).model).state_dict()},
                   weights)
        for num_frames in args.frames:
            video = tmp / f"video_{num_frames}.mp4"
            writer = Mp4Writer(video, Fraction(6), *args.size)
            rng = np.random.default_rng(0)
            for t in range(num_frames):
                writer.write(synthetic_frame(t, *args.size, rng))
            writer.close()
            infer = [sys.executable, "-m", "pipelines.cli", "infer", str(experiment_path), str(video),
                     f"model.weights={weights}", "--output", str(tmp / f"out_{num_frames}"), "--no-progress"]
            results["infer_peak_rss_mb"].append(round(peak_rss_mb(infer), 1))
            summary = json.loads((tmp / f"out_{num_frames}" / "summary.json").read_text())
            results.setdefault("infer_frames_per_s", []).append(summary["frames_per_s"])
            whole = [sys.executable, "-c", WHOLE_VIDEO, str(experiment_path), str(weights), str(video)]
            results["whole_video_peak_rss_mb"].append(round(peak_rss_mb(whole), 1))
    for key in ("infer_peak_rss_mb", "whole_video_peak_rss_mb"):
        results[key.replace("_peak_rss_mb", "_growth")] = round(results[key][-1] / results[key][0], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
