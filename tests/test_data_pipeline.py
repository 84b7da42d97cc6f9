"""End to end: synthetic data to S3 (moto), ingested to shards in S3 on Ray, sampled and augmented
by Ray Data into clip batches, on the driver and inside a 2-worker Ray Train run (each rank its own
share, as training streams it); plus the `ctvis data` CLI."""
from __future__ import annotations

import json

import pytest

from pipelines.config import CropConfig, DataConfig, DatasetSpec, PseudoVideoConfig
from pipelines.data import catalog, synth
from pipelines.data.ingest import IngestOptions, ingest
from tests.services import storage_env_vars


def _data_config(shards_images: str, shards_videos: str) -> DataConfig:
    small = (64, 80, 96)
    return DataConfig(
        train=(DatasetSpec(name="synth_images", ratio=1.0, shards=shards_images),
               DatasetSpec(name="synth_videos", ratio=1.5, shards=shards_videos)),
        sampling_frame_num=3, sampling_frame_range=4, min_size_train=small, max_size_train=160,
        crop=CropConfig(size=(40, 60)),
        pseudo=PseudoVideoConfig(min_size_train=small, max_size_train=160, crop=CropConfig(size=(40, 60))),
        decode_workers=1,
    )


def _clip_digest(batch, i: int) -> str:
    import hashlib

    h, w = batch.image_sizes[i, 0].tolist()
    n = int((batch.gt_classes[i] >= 0).sum())
    digest = hashlib.sha256(batch.images[i, :, :, :h, :w].numpy().tobytes())
    digest.update(batch.gt_masks[i, :, :n, :h, :w].numpy().tobytes())
    digest.update(batch.gt_ids[i, :, :n].numpy().tobytes())
    return digest.hexdigest()


def _train_loop(config):
    """Each rank streams its own clips as training does (pipelines.train.data), from start_step on."""
    import ray.train

    from pipelines.train.data import iter_rank_batches, rank_clip_dataset, rank_positions

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    batch_size, max_iter, start = config["batch_size"], config["max_iter"], config["start_step"]
    expected = rank_positions(start, max_iter - start, batch_size, world, rank)
    dataset = rank_clip_dataset(config["data_config"], seed=5, max_iter=max_iter, batch_size=batch_size,
                                start_step=start, world_size=world, rank=rank, cpus_per_decoder=0.25)
    seen = []
    done = 0
    for batch in iter_rank_batches(dataset, batch_size // world, 32, expected):
        batch.validate(32, num_classes=3)
        positions = expected[done:done + batch.batch_size]
        done += batch.batch_size
        seen.append({
            "positions": positions.tolist(),
            "images": list(batch.images.shape),
            "masks": list(batch.gt_masks.shape),
            "image_sizes": batch.image_sizes.tolist(),
            "gt_ids": batch.gt_ids.tolist(),
            "gt_classes": batch.gt_classes.tolist(),
            "dataset_index": batch.dataset_index.tolist(),
            "digests": [_clip_digest(batch, i) for i in range(batch.batch_size)],
        })
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump(seen, f)
    ray.train.report({"batches": len(seen)})


@pytest.mark.integration
@pytest.mark.slow
def test_synthetic_s3_ingest_and_two_worker_train_batches(ray_local, s3_bucket, tmp_path):
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.data.pipeline import clip_dataset, clip_index_for, iter_clip_batches, load_train_manifests

    root = f"s3://{s3_bucket}"
    videos = synth.generate(f"{root}/raw/videos", synth.SynthConfig(num_videos=5, min_frames=5, max_frames=9, height=64,
                                                                   width=96, num_classes=3, seed=1))
    images = synth.generate(f"{root}/raw/images", synth.SynthConfig(format="coco", num_videos=5, height=64, width=96,
                                                                   num_classes=3, seed=2, start_video_id=100))
    shard_uris = {}
    for name, summary in (("synth_videos", videos), ("synth_images", images)):
        info = catalog.resolve_split(name, annotations=summary["annotations"], frames_root=summary["frames_root"])
        uri = f"{root}/shards/{name}"
        manifest = ingest(info, uri, IngestOptions(executor="ray", shard_mb=0.008, cpus_per_task=0.5,
                                                    worker_env=storage_env_vars()))
        assert manifest["num_videos"] == 5 and manifest["num_shards"] >= 2 and manifest["problem_counts"] == {}
        shard_uris[name] = uri
    data_config = _data_config(shard_uris["synth_images"], shard_uris["synth_videos"])

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=1)
    batch_size, max_iter = 4, 2  # the run's clip stream: 8 clips
    manifests = load_train_manifests(data_config.train)
    index = clip_index_for(data_config, manifests, [s.ratio for s in data_config.train], epoch=0, seed=5,
                           num_clips=batch_size * max_iter)
    ds = clip_dataset(data_config, manifests, index, clips_per_block=2, cpus_per_decoder=0.25)
    digests = {}
    for batch, positions in iter_clip_batches(ds, batch_size=3, return_positions=True):
        batch.validate(32, num_classes=3)
        for i, p in enumerate(positions.tolist()):
            digests[p] = _clip_digest(batch, i)
    assert sorted(digests) == list(range(batch_size * max_iter))

    out = tmp_path / "ranks"
    out.mkdir()
    trainer = TorchTrainer(
        _train_loop,
        # resume mid-run: the workers start at step 1, as after a restart from a checkpoint
        train_loop_config={"out": str(out), "data_config": data_config, "batch_size": batch_size,
                           "max_iter": max_iter, "start_step": 1},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="data-integration", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(ranks), "each worker gets its own share of the clips"
    assert [p for b in ranks[0] for p in b["positions"]] == [4, 5] and [p for b in ranks[1] for p in b["positions"]] == [6, 7]
    # the same clips as the driver's dataset, whichever worker or actor made them
    for b in (b for r in ranks for b in r):
        for p, digest in zip(b["positions"], b["digests"]):
            assert digest == digests[p]
    for batch in (b for r in ranks for b in r):
        B, T, C, H, W = batch["images"]
        assert T == 3 and C == 3 and H % 32 == 0 and W % 32 == 0
        assert batch["masks"][:2] == [B, T] and batch["masks"][3:] == [H, W]
        for sizes in batch["image_sizes"]:
            assert len({tuple(s) for s in sizes}) == 1  # one scale per clip
            assert 64 <= min(sizes[0]) and max(sizes[0]) <= 160
        assert set(batch["dataset_index"]) <= {0, 1}
        for ids, classes in zip(batch["gt_ids"], batch["gt_classes"]):
            n = sum(c >= 0 for c in classes)
            assert all(i in (-1, k) for frame in ids for k, i in enumerate(frame))
            assert all(i == -1 for frame in ids for i in frame[n:])


def test_cli_synth_ingest_inspect_export(tmp_path, capsys):
    from pipelines.cli import main

    raw = tmp_path / "raw"
    assert main(["data", "synth", str(raw), "--videos", "2", "--frames", "3", "4", "--size", "32", "48", "--seed", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 2 and (raw / "annotations.json").is_file()
    shards = tmp_path / "shards"
    assert main(["data", "ingest", "mysynth", str(shards), "--annotations", summary["annotations"],
                 "--frames-root", summary["frames_root"], "--executor", "local"]) == 0
    ingested = json.loads(capsys.readouterr().out)
    assert ingested["num_videos"] == 2 and ingested["problem_counts"] == {} and ingested["categories"] == 3
    assert main(["data", "inspect", str(shards), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checksum_mismatches"] == []
    assert main(["data", "export", str(shards), str(tmp_path / "back.json")]) == 0
    capsys.readouterr()
    back = json.loads((tmp_path / "back.json").read_text())
    original = json.loads((raw / "annotations.json").read_text())
    assert [a["segmentations"] for a in back["annotations"]] == [a["segmentations"] for a in original["annotations"]]
    assert main(["data", "ingest", "ytvis_2019_trian", str(shards)]) == 2
    assert "did you mean 'ytvis_2019_train'" in capsys.readouterr().err
