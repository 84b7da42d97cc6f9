"""Benchmark: YouTube-VIS evaluation of a 300-video case, ours vs a loop implementation of the official
algorithm, measured in the same run. Prints one JSON line.

The case is shaped like the held-back timing case (300 videos of 20-36 frames at 180x320, 3-7 ground
truth tracks and 20-100 CTVIS-style top-k predictions per video, gzip JSON), generated
deterministically (cached under --cache-dir).

Timed, each end to end from the .json.gz files (read + parse + evaluate + accumulate + summarize):
- ours, in process (min of --repeats runs), as `ctvis eval` runs it: results read + gunzipped in a
  thread while the GT is parsed;
- `python -m pipelines.cli eval` in a subprocess, interpreter start-up included (min of --repeats);
- baseline: `tests/eval_loop_reference.evaluate_loop` (per-frame pycocotools merges and Python matching loops,
  as the official code), once; its stats must equal ours.
Every ratio printed is against the baseline measured in this run (no figure typed in here). For
scale only: the reference README measured the official evaluator on the held-back case at 3.1 s
(evaluate + accumulate + summarize, min of 7) plus 3.4-4.6 s loading, on this kind of machine; the
official code cannot be installed here to run it side by side.

Run: python benchmarks/bench_eval.py [--repeats 3] [--cache-dir /tmp/ctvis_bench_eval] [--skip-baseline]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402

from pipelines.evaluation.data import load_ground_truth, load_predictions, read_bytes_in_background  # noqa: E402
from tests.eval_loop_reference import evaluate_loop  # noqa: E402
from pipelines.evaluation.metrics import evaluate  # noqa: E402
from tests.eval_synthetic import SyntheticCaseConfig, make_synthetic_case  # noqa: E402


def make_case(cache_dir: Path, seed: int) -> tuple[Path, Path]:
    folder = cache_dir / f"seed{seed}"
    gt_path, results_path = folder / "gt.json.gz", folder / "results.json.gz"
    if not (gt_path.exists() and results_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        ground_truth, results = make_synthetic_case(SyntheticCaseConfig(seed=seed))
        for path, data in ((gt_path, ground_truth), (results_path, results)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(json.dumps(data).encode(), compresslevel=6))
            tmp.replace(path)
    return gt_path, results_path


def ours(gt_path: Path, results_path: Path) -> np.ndarray:
    # As `ctvis eval` does: both files are read and gunzipped in threads; the results one while the GT is parsed.
    results_bytes = read_bytes_in_background(results_path)
    gt = load_ground_truth(read_bytes_in_background(gt_path).result(), name=str(gt_path))
    return evaluate(gt, load_predictions(results_bytes.result(), name=str(results_path))).stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=os.path.join("/tmp", "ctvis_bench_eval"))
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    gt_path, results_path = make_case(Path(args.cache_dir), args.seed)

    ours_times, stats = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        stats = ours(gt_path, results_path)
        ours_times.append(time.perf_counter() - start)

    cli_times = []
    command = [sys.executable, "-m", "pipelines.cli", "eval", "--gt", str(gt_path), "--results", str(results_path)]
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
        cli_times.append(time.perf_counter() - start)

    figures = {
        "case": {"videos": 300, "ground_truth": None, "predictions": None, "results_gz_mb": None},
        "ours_end_to_end_s_min": round(min(ours_times), 3),
        "ours_end_to_end_s_all": [round(t, 3) for t in ours_times],
        "cli_with_startup_s_min": round(min(cli_times), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "ap": float(stats[0]),
    }
    with gzip.open(results_path, "rb") as handle:
        results = json.loads(handle.read())
    with gzip.open(gt_path, "rb") as handle:
        ground_truth = json.loads(handle.read())
    figures["case"].update(ground_truth=len(ground_truth["annotations"]), predictions=len(results),
                           results_gz_mb=round(results_path.stat().st_size / 1e6, 1))
    if not args.skip_baseline:
        del results, ground_truth
        start = time.perf_counter()
        with gzip.open(gt_path, "rb") as handle:
            ground_truth = json.loads(handle.read())
        with gzip.open(results_path, "rb") as handle:
            results = json.loads(handle.read())
        baseline_stats, _, _ = evaluate_loop(ground_truth, results)
        baseline = time.perf_counter() - start
        np.testing.assert_allclose(stats, baseline_stats, rtol=0, atol=1e-12)
        figures["baseline_loop_end_to_end_s"] = round(baseline, 3)
        figures["speedup_vs_baseline_loop"] = round(baseline / min(ours_times), 1)
        figures["speedup_vs_baseline_loop_cli"] = round(baseline / min(cli_times), 1)
        figures["identical_stats"] = True
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
