"""`ctvis infer MODEL VIDEO --output DIR`: a model on one of your videos, online, in bounded memory.

MODEL: a registered model (``models:/ctvis_r50_ytvis19@published``), an experiment YAML with
``model.weights=URI``, or a training checkpoint directory. VIDEO: an mp4/mov/webm/mkv/avi file, a
folder of frames (jpg/png), or either on ``s3://``. DIR (local or ``s3://``) receives
``overlay.mp4`` (H.264, plays in a browser), ``tracks.json`` (YouTube-VIS results format, per-frame
RLE at the original size, plus track ids and class names) and ``summary.json``; they appear only
when the run succeeds. Top-level imports stay in the standard library.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

OUTPUT_FILES = ("overlay.mp4", "summary.json", "tracks.json")  # tracks.json last: it marks a finished run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("inputs", nargs="+", metavar="MODEL VIDEO [key.sub=value]",
                        help="the model, the video, then config overrides such as model.weights=URI "
                             "model.tracker.match_score_thr=0.4")
    parser.add_argument("--output", required=True, help="folder for overlay.mp4, tracks.json, summary.json")
    parser.add_argument("--score-thr", type=float, default=0.3,
                        help="tracks below this score are left out of tracks.json and the overlay (default: 0.3)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="longer edge of the frames the network sees (default: the model's data.max_size_test)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--every", type=int, default=1, help="process every N-th frame (default: 1)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="a frame that cannot be decoded: stop (default) or leave it out and list it")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of a frame folder (default: 6)")
    parser.add_argument("--no-overlay", action="store_true", help="write tracks.json and summary.json only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tracking-uri", default=None, help="MLflow registry for models:/ URIs "
                                                             "(default: MLFLOW_TRACKING_URI or ./mlflow.db)")


def _print_summary(result, output: str) -> None:
    summary = result.summary()
    print(f"{summary['video']}: {summary['frames_processed']} frames processed at "
          f"{summary['size'][1]}x{summary['size'][0]} (network {summary['test_size'][1]}x{summary['test_size'][0]}), "
          f"{summary['frames_per_s']:.2f} frames/s" + (f", {len(result.skipped)} frames skipped" if result.skipped else ""))
    tracks = summary["tracks"]
    print(f"{len(tracks)} tracks:" if tracks else "no track above the score threshold")
    if tracks:
        print(f"  {'track':>5}  {'class':<16} {'score':>6}  {'frames':>6}  first-last")
        for t in tracks[:20]:
            print(f"  {t['track_id']:>5}  {t['category_name'][:16]:<16} {t['score']:>6.3f}  {t['frames_present']:>6}  "
                  f"{t['first_frame']}-{t['last_frame']}")
        if len(tracks) > 20:
            print(f"  ... {len(tracks) - 20} more in summary.json")
    print(f"outputs in {output}: " + ", ".join(OUTPUT_FILES))


def run(args: argparse.Namespace) -> int:
    import json

    from pipelines import storage
    from pipelines.config import ConfigError
    from pipelines.inference.command import split_overrides
    from pipelines.inference.online import InferOptions, load_model, run_online
    from pipelines.inference.user_video import UserVideoError, open_video
    from pipelines.weights import WeightsError

    import os

    # One progress bar (ours, frames/s): not MLflow's per-download bars for a registry model's files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    positional, overrides = split_overrides(args.inputs)
    name = "ctvis infer"
    if len(positional) != 2:
        print(f"{name}: error: expected MODEL VIDEO, got {len(positional)} argument(s): "
              f"{' '.join(positional) or '(none)'}", file=sys.stderr)
        return 2
    model_arg, video_arg = positional
    output = args.output
    remote = storage.is_remote(output)
    work = Path(tempfile.mkdtemp(prefix="ctvis-infer-"))
    try:
        options = InferOptions(score_thr=args.score_thr, max_size=args.max_size, every=args.every,
                               on_error=args.on_error, progress=not args.no_progress)
        if not remote:
            try:
                Path(output).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"--output {output}: cannot create the folder ({error.strerror or error})") from None
        staging = work if remote else Path(output)
        partial = {file: staging / f".{file}.partial" for file in OUTPUT_FILES}
        try:
            with open_video(video_arg, fps=args.fps) as video:  # a bad video fails before the model loads
                loaded = load_model(model_arg, overrides, args.tracking_uri, args.device)
                print(f"model: {loaded.description} on {loaded.device}", file=sys.stderr, flush=True)
                result = run_online(loaded, video, options, work,
                                    overlay_path=None if args.no_overlay else partial["overlay.mp4"],
                                    log=lambda line: print(f"{name}: {line}", file=sys.stderr, flush=True))
            partial["summary.json"].write_text(json.dumps(result.summary(), indent=1) + "\n")
            partial["tracks.json"].write_text(json.dumps(result.tracks))
            for file in OUTPUT_FILES:
                if not partial[file].exists():
                    continue
                if remote:
                    storage.copy(str(partial[file]), storage.join(output, file))
                else:
                    partial[file].replace(Path(output) / file)
        finally:
            for path in partial.values():
                path.unlink(missing_ok=True)
    except (ValueError, ConfigError, WeightsError, UserVideoError, storage.StorageError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print_summary(result, output)
    return 0
