"""Throughput of the clip pipeline from S3 shards vs the raw JPEG decode bound, in one run.

Starts a moto S3 server and a Ray local cluster on 127.0.0.1, writes a synthetic YouTube-VIS
split (default 720x1280 frames, as YouTube-VIS) to S3, ingests it to shards in S3, and then
measures on the same cores:

  decode_fps    the raw JPEG decode rate of exactly the frames the epoch's clips use (bytes already
                in memory, one process per core, Pillow) -- the bound
  fast_decode_fps  the same with the pipeline's decoder (simplejpeg, straight into numpy; the same
                pixels) -- the fastest full-decode bound
  pipeline_fps  frames per second delivered as collated `ClipBatch`es by clip_dataset +
                iter_clip_batches at the R50 YTVIS recipe's clip settings (10 frames within +-20,
                shortest edge 320-640 capped at 768, flip, moving crop 384-600 on half the clips),
                steady state after the first batch
  serial_fps    the same clips decoded and augmented by a plain loop in one process (the
                original's one-dataloader-worker path); its clips are asserted identical to the
                pipeline's

Prints one JSON line. Run: python benchmarks/bench_data.py [--videos 24 --frames 24 --clips 96]
[--storage s3|local] (local: the same pipeline without the moto server's CPU on the same cores)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _decode_all(frames: list[bytes]) -> int:
    from PIL import Image
    import io

    for data in frames:
        im = Image.open(io.BytesIO(data))
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
    return len(frames)


def _decode_all_fast(frames: list[bytes]) -> int:
    from pipelines.data.augment import decode_rgb

    for data in frames:
        decode_rgb(data)
    return len(frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=(720, 1280))
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--decoders", type=int, default=None, help="decoder actors (default: cpus)")
    parser.add_argument("--serial-clips", type=int, default=12)
    parser.add_argument("--storage", choices=("s3", "local"), default="s3",
                        help="shards on the moto S3 server (a Python process on the same cores) or local files")
    args = parser.parse_args()

    from tests import services

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    os.environ.update(services.ray_loopback_env(work / "home"))
    (work / "home").mkdir(exist_ok=True)
    if args.storage == "local":
        result = run(args, str(work / "data"))
    else:
        with services.moto_server(work) as s3:
            os.environ.update(s3.env)
            s3.client().create_bucket(Bucket="bench")
            result = run(args, "s3://bench")
    result["storage"] = args.storage
    print(json.dumps(result))


def run(args, root: str) -> dict:
    import ray

    from pipelines import storage
    from pipelines.config import DataConfig, DatasetSpec
    from pipelines.data import catalog, synth
    from pipelines.data.augment import augment_clip
    from pipelines.data.ingest import IngestOptions, ingest
    from pipelines.data.pipeline import (
        ROW_COLUMNS, clip_dataset, clip_index_for, decoder_spec, iter_clip_batches, load_train_manifests,
    )
    from pipelines.data.shards import ShardReader

    storage.configure_s3(storage.S3Options())
    t0 = time.perf_counter()
    summary = synth.generate(f"{root}/raw", synth.SynthConfig(
        num_videos=args.videos, min_frames=args.frames, max_frames=args.frames, height=args.size[0], width=args.size[1],
        num_classes=4, max_instances=4, seed=0))
    synth_s = time.perf_counter() - t0

    ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             log_to_driver=False)
    try:
        info = catalog.resolve_split("bench", annotations=summary["annotations"], frames_root=summary["frames_root"])
        t0 = time.perf_counter()
        manifest = ingest(info, f"{root}/shards", IngestOptions(executor="ray", shard_mb=16))
        ingest_s = time.perf_counter() - t0

        data_config = DataConfig(train=(DatasetSpec(name="bench", shards=f"{root}/shards"),))  # R50 YTVIS19 clip settings
        manifests = load_train_manifests(data_config.train)
        index = clip_index_for(data_config, manifests, [1.0], epoch=0, seed=0, num_clips=args.clips)
        T = data_config.sampling_frame_num

        # the bytes of exactly the frames the clips use (duplicates included), for the decode bound
        reader = ShardReader(columns=ROW_COLUMNS)
        m = manifests[0]
        rows = {}
        for v in sorted(set(index.video_row.tolist())):
            rows[v] = reader.read(m.shard_uri(int(m.shard_index[v])), int(m.row_index[v]))
        frame_bytes = [rows[int(v)]["frames"][int(f)] for v, fs in zip(index.video_row, index.frame_indices) for f in fs]
        workers = args.cpus
        chunks = [frame_bytes[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_decode_all, [c[:2] for c in chunks]))  # warm the processes
            t0 = time.perf_counter()
            decoded = sum(pool.map(_decode_all, chunks))
            decode_s = time.perf_counter() - t0
        decode_fps = decoded / decode_s
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_decode_all_fast, [c[:2] for c in chunks]))
            t0 = time.perf_counter()
            decoded = sum(pool.map(_decode_all_fast, chunks))
            fast_decode_fps = decoded / (time.perf_counter() - t0)

        # serial loop: one process decodes and augments clip after clip
        spec = decoder_spec(data_config, manifests)
        serial = {}
        t0 = time.perf_counter()
        for p in range(args.serial_clips):
            row = rows[int(index.video_row[p])]
            serial[p] = augment_clip(row, index.frame_indices[p], "video", int(index.aug_seed[p]),
                                     spec.video_augmentation, spec.class_index[0])
        serial_fps = args.serial_clips * T / (time.perf_counter() - t0)

        ds = clip_dataset(data_config, manifests, index, clips_per_block=1, decode_workers=args.decoders or args.cpus,
                          cpus_per_decoder=1.0)
        frames = 0
        first = None
        t_start = time.perf_counter()
        checked = 0
        for batch, positions in iter_clip_batches(ds, batch_size=args.batch_size, return_positions=True, prefetch_batches=4):
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                frames += batch.batch_size * batch.num_frames
            for i, p in enumerate(positions.tolist()):
                if p in serial:  # identical clips: the pipeline only distributes the pure function
                    h, w = serial[p]["frames"].shape[2:]
                    assert np.array_equal(batch.images[i, :, :, :h, :w].numpy(), serial[p]["frames"])
                    assert np.array_equal(batch.gt_masks[i, :, : serial[p]["masks"].shape[1], :h, :w].numpy(), serial[p]["masks"])
                    checked += 1
        end = time.perf_counter()
        assert checked == args.serial_clips, checked
        pipeline_fps = frames / (end - first)
        total_fps = args.clips * T / (end - t_start)
    finally:
        ray.shutdown()
    return {
        "benchmark": "data_pipeline_throughput",
        "frame_size": list(args.size),
        "cpus": args.cpus,
        "clips": args.clips,
        "frames_per_clip": T,
        "batch_size": args.batch_size,
        "decode_fps": round(decode_fps, 1),
        "fast_decode_fps": round(fast_decode_fps, 1),
        "pipeline_fps": round(pipeline_fps, 1),
        "pipeline_fps_including_startup": round(total_fps, 1),
        "serial_fps": round(serial_fps, 1),
        "pipeline_vs_decode_bound": round(pipeline_fps / decode_fps, 3),
        "pipeline_vs_fast_decode_bound": round(pipeline_fps / fast_decode_fps, 3),
        "pipeline_vs_serial": round(pipeline_fps / serial_fps, 2),
        "identical_clips_checked": checked,
        "synth_s": round(synth_s, 1),
        "ingest_s": round(ingest_s, 1),
        "shards": manifest["num_shards"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    main()
