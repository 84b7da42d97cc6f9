"""`ctvis eval`: official YouTube-VIS / OVIS / YouTube-VIS 2022 metrics of a results file.

Top-level imports are standard library only: `ctvis --help` imports this module to list the verb,
and evaluating a file never imports torch or ray (ray only with --workers).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

DESCRIPTION = """\
Evaluate a results file with the official YouTube-VIS / OVIS metrics (same numbers as the official
cocoapi evaluators, computed much faster).

inputs
  --gt        ground truth in YouTube-VIS format (videos, categories, annotations), .json or .json.gz
              (OVIS: annotations carry per-frame "occlusion" labels)
  --results   results: [{"video_id", "category_id", "score", "segmentations": [per frame RLE | null]}],
              .json or .json.gz (the file a model writes, or results.json from a submission)

benchmarks
  ytvis       YouTube-VIS 2019 / 2021: AP, AP50, AP75, AP_S/M/L, AR1, AR10, AR100, AR_S/M/L
  ovis        the same plus AP/AR for light, medium and heavy occlusion (18 stats)
  ytvis2022   evaluated separately on --gt-short and --gt-long (results are checked against --gt when
              given); mAP = (AP_short + AP_long) / 2

outputs
  a table on stdout (values x100, as papers report them; '-' where there is no ground truth) and,
  with --output, a JSON file: {"benchmark", "stats": {name: value in [0, 1], -1 = no ground truth},
  "per_category": [{category_id, name, AP, AP50, AP75, AR1, AR10, AR100 (null = no ground truth)}],
  "warnings": [...], "timing_s"}; ytvis2022 adds "short", "long" and "ytvis2022_scores".

input checks
  every RLE (results and ground truth) is decoded and checked first: only RLE characters, no number
  cut off, no negative run, runs summing to height x width. An invalid one is an error naming the
  entry (or annotation) and frame: the official code would read past it or never finish.
  results naming a video that is not in the ground truth: error naming the entry.
  evaluated as the official code does, with a warning naming the entries (an error with --strict):
    a segmentation list whose length differs from the video's (the IoU uses the frames both lists
    have; extra entries count in the mean area);
    a mask whose size is not the video's (that frame adds neither intersection nor union);
    duplicate entries: same video, category and masks (each is a detection of its own).
  empty results: all statistics 0 where ground truth exists, with a warning.

exit status: 0 on success, 2 on bad input.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--gt", help="ground-truth JSON (.json or .json.gz); for ytvis2022 the full "
                                     "validation GT (optional there)")
    parser.add_argument("--results", required=True, help="results JSON (.json or .json.gz)")
    parser.add_argument("--benchmark", choices=("ytvis", "ovis", "ytvis2022"), default="ytvis",
                        help="metric set (default: ytvis)")
    parser.add_argument("--gt-short", help="ytvis2022: ground truth of the short videos")
    parser.add_argument("--gt-long", help="ytvis2022: ground truth of the long videos")
    parser.add_argument("--output", help="write the metrics as JSON to this file")
    parser.add_argument("--strict", action="store_true",
                        help="reject what is otherwise evaluated with a warning: segmentation lists whose length is "
                             "not the video's, masks of another size than the video's, duplicate entries")
    parser.add_argument("--workers", type=int, default=0,
                        help="spread the mask intersections over this many Ray workers (0: in process)")
    parser.add_argument("--ray-address", default=None, help="with --workers: an existing Ray cluster")


def _format_table(title: str, names, stats) -> str:
    cells = [f"{name:>15}" for name in names]
    values = [f"{'-':>15}" if value == -1 else f"{100 * value:>15.2f}" for value in stats]
    lines = [title]
    for start in range(0, len(cells), 6):
        lines.append("".join(cells[start:start + 6]))
        lines.append("".join(values[start:start + 6]))
    return "\n".join(lines)


def _evaluation_json(evaluation) -> dict:
    return {"stats": evaluation.stats_by_name, "per_category": evaluation.per_category(),
            "num_videos": evaluation.num_videos, "num_ground_truth": evaluation.num_ground_truth,
            "num_predictions_evaluated": evaluation.num_predictions}


def run(args: argparse.Namespace) -> int:
    from .files import InputError, read_bytes_in_background

    start = time.perf_counter()
    try:
        if args.benchmark == "ytvis2022":
            if not (args.gt_short and args.gt_long):
                raise InputError("--benchmark ytvis2022 needs --gt-short and --gt-long")
        elif not args.gt:
            raise InputError(f"--benchmark {args.benchmark} needs --gt")
        elif args.gt_short or args.gt_long:
            raise InputError("--gt-short / --gt-long are for --benchmark ytvis2022")
        # Files are read and gunzipped in threads (zlib releases the GIL) while numpy, pycocotools and
        # the evaluator are imported and the GT is parsed; the results file (the big one) first.
        results_bytes = read_bytes_in_background(args.results)
        gt_bytes = {path: read_bytes_in_background(path) for path in (args.gt, args.gt_short, args.gt_long) if path}
        from .suites import run_evaluation
        from .data import load_ground_truth, load_predictions

        def ground_truth(path):
            return load_ground_truth(gt_bytes[path].result(), name=str(path)) if path else None

        gt, gt_short, gt_long = ground_truth(args.gt), ground_truth(args.gt_short), ground_truth(args.gt_long)
        preds = load_predictions(results_bytes.result(), name=str(args.results))
        parallel_map = None
        if args.workers > 0:
            from .parallel import ray_intersection_map
            parallel_map = ray_intersection_map(args.workers, args.ray_address)
        report = run_evaluation(args.benchmark, preds, gt, gt_short, gt_long, args.strict, parallel_map)
    except (InputError, ValueError) as error:
        print(f"ctvis eval: error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    evaluations = [e for e in (report.main, report.short, report.long) if e is not None]
    warnings = list(dict.fromkeys(report.warnings + [w for e in evaluations for w in e.warnings]))
    for warning in warnings:
        print(f"ctvis eval: warning: {warning}", file=sys.stderr)
    output = {"benchmark": args.benchmark, "gt": args.gt, "results": args.results, "warnings": warnings,
              "timing_s": round(elapsed, 4)}
    if report.main is not None:
        title = "all videos" if args.benchmark == "ytvis2022" else args.benchmark
        print(_format_table(title, report.main.stat_names, report.main.stats))
        output.update(_evaluation_json(report.main))
    if args.benchmark == "ytvis2022":
        scores = report.ytvis2022_scores()
        print(_format_table("ytvis2022 (S = short videos, L = long videos)", list(scores), list(scores.values())))
        output["ytvis2022_scores"] = scores
        output["short"] = _evaluation_json(report.short)
        output["long"] = _evaluation_json(report.long)
        if report.main is None:
            output["stats"] = {"mAP": scores["mAP"]}
    if args.output:
        from pipelines import storage

        try:
            storage.write_text(args.output, json.dumps(output, indent=1))
        except storage.StorageError as error:
            print(f"ctvis eval: error: {error}", file=sys.stderr)
            return 2
        print(f"metrics written to {args.output}")
    return 0
