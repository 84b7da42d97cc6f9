"""`make demo` (``python -m pipelines.demo``): the platform's main job, end to end on one machine.

The recipe is data: ``experiments/tiny_demo.yaml``. The demo
1. validates the whole config (with your overrides) and checks that the run fits this machine's
   CPUs, before any work;
2. generates a synthetic YouTube-VIS dataset (a train and a validation split of moving, occluding
   textured shapes) under ``demo_output/data/raw`` and ingests both into Parquet shards
   (``demo_output/data/shards``) with Ray tasks;
3. trains with 2 Ray Train CPU workers on clip batches streamed by Ray Data, with checkpoints in
   ``demo_output/runs`` and everything tracked in the local MLflow store (``./mlruns``), validating
   on the synthetic validation split (official YTVIS metrics), printing progress as it goes;
4. registers the model in the MLflow registry, logs the overlay visualisations and the loss curves;
5. runs the registered model on a generated mp4 (`ctvis infer`: online, bounded memory) and writes an
   overlay video (H.264, plays in a browser), tracks.json and a summary under ``demo_output/infer``;
6. prints a short summary: the AP table, the MLflow run id, where the artifacts, checkpoints and the
   overlay video are, and how to open the MLflow UI.

Running it again reuses the dataset and starts a fresh run (an interrupted run is resumed from its
last checkpoint instead). Plain ``key=value`` arguments override the recipe (e.g.
``train.schedule.max_iter=200``: the decay step scales along); ``--workers``, ``--train-videos``,
``--val-videos`` and ``--output`` adjust the rest.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DEMO_EXPERIMENT = "experiments/tiny_demo.yaml"
STAT_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help=f"overrides of {DEMO_EXPERIMENT}")
    parser.add_argument("--experiment", default=DEMO_EXPERIMENT)
    parser.add_argument("--output", default="demo_output", help="data and Ray Train runs go here")
    parser.add_argument("--train-videos", type=int, default=48)
    parser.add_argument("--val-videos", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: the recipe's)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    return parser.parse_args(argv)


def make_dataset(train_shards: str, val_shards: str, raw_root: Path, train_videos: int, val_videos: int,
                 log) -> None:
    """Synthesise and ingest the train and validation splits (skipped when already there)."""
    from pipelines.data import catalog, synth
    from pipelines.data.ingest import IngestOptions, ingest

    for split, target, seed, videos, first_id in (("train", train_shards, 7, train_videos, 1),
                                                  ("val", val_shards, 8, val_videos, 10001)):
        raw = raw_root / split
        config = synth.SynthConfig(num_videos=videos, min_frames=8, max_frames=16, height=64, width=64,
                                   num_classes=3, min_instances=1, max_instances=3, seed=seed,
                                   start_video_id=first_id)
        started = time.time()
        summary = synth.generate(str(raw), config)
        info = catalog.resolve_split(f"synth_{split}", annotations=summary["annotations"],
                                     frames_root=summary["frames_root"])
        manifest = ingest(info, target, IngestOptions(executor="ray", cpus_per_task=0.5), log=log)
        log(f"{split}: {manifest['num_videos']} videos, {manifest['num_frames']} frames, "
            f"{manifest['num_instances']} instances -> {target} ({time.time() - started:.1f} s)")


def make_demo_video(path: Path, log) -> Path:
    """A synthetic 48-frame video (the demo data's shapes, one new sequence), upscaled 4x to 256x256
    and encoded as an H.264 mp4: "a user's video" for `ctvis infer`."""
    import tempfile
    from fractions import Fraction

    import numpy as np
    from PIL import Image

    from pipelines.data import synth
    from pipelines.inference.overlay import Mp4Writer

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, synth.SynthConfig(num_videos=1, min_frames=48, max_frames=48, height=64, width=64,
                                              num_classes=3, min_instances=2, max_instances=3, seed=21,
                                              start_video_id=1))
        frames = sorted(Path(tmp).rglob("*.jpg"))
        writer = Mp4Writer(path.with_suffix(".partial.mp4"), Fraction(6), 256, 256)
        for frame in frames:
            writer.write(np.asarray(Image.open(frame).convert("RGB").resize((256, 256), Image.BILINEAR)))
        writer.close()
    path.with_suffix(".partial.mp4").replace(path)
    log(f"demo video: {len(frames)} frames at 256x256 -> {path}")
    return path


def format_table(val_metrics: dict[str, float]) -> str:
    names = [n for n in STAT_NAMES if f"val/{n}" in val_metrics]
    header = "".join(f"{n:>8}" for n in names)
    values = "".join(f"{'-':>8}" if val_metrics[f"val/{n}"] < 0 else f"{val_metrics[f'val/{n}']:>8.1f}" for n in names)
    return f"{header}\n{values}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()

    def log(line: str) -> None:
        print(f"[demo {time.time() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    from pipelines.config import ConfigError, load_experiment
    from pipelines.ray_runtime import ResourceError, connect
    from pipelines.train import state
    from pipelines.train.job import run_training
    from pipelines.train.preflight import PreflightError, check_cluster, resolve_paths

    output = Path(args.output).absolute()
    train_shards, val_shards = str(output / "data" / "shards" / "train"), str(output / "data" / "shards" / "val")
    overrides = [f"data.train.0.shards={train_shards}", f"data.val.shards={val_shards}",
                 f"storage.runs_root={output / 'runs'}",
                 *([f"compute.num_workers={args.workers}"] if args.workers else []), *args.overrides]
    # 1. the whole config, and the resources it needs, before any work
    try:
        experiment = resolve_paths(load_experiment(args.experiment, overrides))
        for note in experiment.notes:
            log(f"note: {note}")
        cluster = connect(num_cpus=args.cpus, log_to_driver=False, log=log)
        check_cluster(experiment, cluster, log)
    except (ConfigError, PreflightError, ResourceError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    import ray

    runs_root, run_name = experiment.storage.runs_root, experiment.train.run_name or experiment.name
    info = state.read_run_info(runs_root, run_name)
    if info is not None and info.get("finished"):
        shutil.rmtree(state.run_dir(runs_root, run_name))  # a finished demo run: start a fresh one
    try:
        make_dataset(train_shards, val_shards, output / "data" / "raw", args.train_videos, args.val_videos, log)
        log(f"training {experiment.name}: {experiment.train.schedule.max_iter} steps of {experiment.train.batch_size} "
            f"clips on {experiment.compute.num_workers} Ray Train workers")
        try:
            summary = run_training(experiment, log=log)
        except (PreflightError, ResourceError) as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 2
    finally:
        ray.shutdown()

    # 5. the registered model on "a user's video"
    from pipelines.cli import main as ctvis

    video = make_demo_video(output / "videos" / "shapes.mp4", log)
    model_uri = f"models:/{summary.registered_model}/{summary.registered_version}"
    log(f"ctvis infer {model_uri} {video}")
    infer_code = ctvis(["infer", model_uri, str(video), "--output", str(output / "infer"),
                        "--tracking-uri", summary.tracking_uri, "--no-progress"])

    tracking = summary.tracking_uri
    ui = (f"mlflow ui --backend-store-uri {tracking}" if tracking.startswith("sqlite:")
          else f"open {tracking}")
    lines = [
        "",
        f"CTVIS demo: {summary.experiment_name} trained for {summary.final_step} steps "
        f"(final loss {summary.final_loss:.3f}) in {time.time() - started:.0f} s",
        f"validation on the synthetic split ({experiment.eval.benchmark} metrics, x100):",
        format_table(summary.val_metrics),
        f"MLflow run:       {summary.mlflow_run_id}",
        f"artifacts:        {summary.artifact_uri}",
        "                  (config/resolved.yaml, model/, results/val_results.json, plots/loss_curves.png, "
        "visualizations/*.png)",
        f"checkpoints:      {summary.run_dir}",
        f"registered model: models:/{summary.registered_model}/{summary.registered_version}",
        f"MLflow UI:        {ui}   (then http://127.0.0.1:5000)",
        f"predict again:    python -m pipelines.cli predict models:/{summary.registered_model}/"
        f"{summary.registered_version} {val_shards} --output {output}/predict   "
        "(results.json, submission.zip, the same AP)",
        f"your video:       python -m pipelines.cli infer {model_uri} {video} --output {output}/infer",
        (f"overlay video:    {output}/infer/overlay.mp4   (tracks.json, summary.json beside it)" if infer_code == 0
         else "overlay video:    ctvis infer failed (see above)"),
    ]
    print("\n".join(lines), flush=True)
    return infer_code


if __name__ == "__main__":
    sys.exit(main())
