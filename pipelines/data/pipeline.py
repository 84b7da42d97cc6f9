"""Ray Data: clip rows from ingested shards, decoded and augmented in an actor pool, collated on
each Ray Train worker into `models.clip_batch.ClipBatch`.

    index = clip_index_for(data_config, manifests, ratios, epoch=e, seed=s, num_clips=n)
    ds = clip_dataset(data_config, manifests, index, clips_per_block=b)
    for batch in iter_clip_batches(ds, batch_size=b, size_divisibility=32):
        losses = model(batch.to(device))

(Training builds each rank's dataset this way inside its worker: `pipelines.train.data`.)

The epoch's clip index is built up front (`sampling.build_clip_index`): a small table of
(position, dataset, shard, row, frames, seed) split into small blocks. `ClipDecoder` actors read
the one row group of each clip's video from its shard (ranged reads, footers cached per actor),
decode the sampled frames and augment them (`augment.augment_clip`, a pure function of the row
and the seed). Masks travel bit-packed. No groupby, join or shuffle runs in the hot path; a clip's
content depends only on (seed, epoch, position), whichever worker or actor handles it.

Under a 2-core budget, cap Ray Data (`DataContext.execution_options.resource_limits`) and give
the decoders fractional CPUs (`cpus_per_decoder`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from models.clip_batch import ClipBatch, collate_clips
from pipelines.data import augment as aug_mod
from pipelines.data.catalog import contiguous_index
from pipelines.data.sampling import ClipIndex, build_clip_index
from pipelines.data.shards import Manifest, ShardReader, load_manifest

ROW_COLUMNS = ["video_id", "height", "width", "length", "frames", "category_ids", "iscrowd", "segmentations"]


def augmentations_from_config(data_config) -> tuple[aug_mod.VideoAugmentation, aug_mod.PseudoVideoAugmentation]:
    """The video and pseudo-video augmentation settings of a `pipelines.config.DataConfig`."""
    flip = data_config.random_flip != "none"
    video = aug_mod.VideoAugmentation(
        min_sizes=tuple(data_config.min_size_train),
        max_size=data_config.max_size_train,
        flip=flip,
        crop_enabled=data_config.crop.enabled,
        crop_size=tuple(data_config.crop.size),
        crop_motion=data_config.crop.motion,
    )
    pseudo_cfg = data_config.pseudo
    pseudo = aug_mod.PseudoVideoAugmentation(
        min_sizes=tuple(pseudo_cfg.min_size_train),
        max_size=pseudo_cfg.max_size_train,
        flip=flip,
        crop_enabled=pseudo_cfg.crop.enabled,
        crop_size=tuple(pseudo_cfg.crop.size),
        rotation="rotation" in pseudo_cfg.augmentations,
        rotate_angle=pseudo_cfg.rotate_angle,
    )
    return video, pseudo


def load_train_manifests(specs: Sequence[Any]) -> list[Manifest]:
    """The manifests of the training datasets; their category tables must agree."""
    manifests = []
    for spec in specs:
        if not spec.shards:
            raise ValueError(f"dataset '{spec.name}': no `shards` URI; run `ctvis data ingest` and set data.train[].shards")
        manifests.append(load_manifest(spec.shards))
    first = manifests[0]
    for spec, m in zip(specs, manifests):
        if m.categories != first.categories:
            raise ValueError(
                f"dataset '{spec.name}' ({m.uri}): its category table differs from '{specs[0].name}' ({first.uri}); "
                "joint training needs one label space"
            )
        if m.num_videos == 0:
            raise ValueError(f"dataset '{spec.name}' ({m.uri}): the manifest lists no videos")
    return manifests


def clip_index_for(data_config, manifests: Sequence[Manifest], ratios: Sequence[float], *, epoch: int, seed: int,
                   num_clips: Optional[int] = None) -> ClipIndex:
    if num_clips is None:
        videos = [m.num_videos for m in manifests if m.kind == "video"]
        num_clips = sum(videos) if videos else sum(m.num_videos for m in manifests)
    return build_clip_index(
        lengths=[m.lengths for m in manifests],
        kinds=[m.kind for m in manifests],
        ratios=ratios,
        num_clips=num_clips,
        num_frames=data_config.sampling_frame_num,
        frame_range=data_config.sampling_frame_range,
        seed=seed,
        epoch=epoch,
        shuffle_frames=data_config.sampling_frame_shuffle,
    )


def clip_index_table(index: ClipIndex, manifests: Sequence[Manifest]):
    """The clip index as a pyarrow table (one row per clip)."""
    import pyarrow as pa

    shard = np.zeros(len(index), dtype=np.int32)
    row = np.zeros(len(index), dtype=np.int32)
    video_id = np.zeros(len(index), dtype=np.int64)
    for d, m in enumerate(manifests):
        where = index.dataset_index == d
        rows = index.video_row[where]
        shard[where] = m.shard_index[rows]
        row[where] = m.row_index[rows]
        video_id[where] = m.video_ids[rows]
    T = index.frame_indices.shape[1]
    frames = pa.FixedSizeListArray.from_arrays(pa.array(index.frame_indices.reshape(-1)), T)
    return pa.table({
        "position": index.position,
        "dataset_index": index.dataset_index,
        "shard": shard,
        "row": row,
        "video_id": video_id,
        "frame_indices": frames,
        "aug_seed": index.aug_seed,
    })


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """What a ClipDecoder needs (picklable, no credentials: storage reads the environment)."""

    shard_uris: tuple[tuple[str, ...], ...]  # [dataset][shard]
    kinds: tuple[str, ...]
    class_index: tuple[dict, ...]  # [dataset] category id -> contiguous
    video_augmentation: aug_mod.VideoAugmentation
    pseudo_augmentation: aug_mod.PseudoVideoAugmentation


class ClipDecoder:
    """Ray Data callable class: clip index rows -> decoded, augmented clips (one actor = one reader)."""

    def __init__(self, spec: DecoderSpec):
        self.spec = spec
        self.reader = ShardReader(columns=ROW_COLUMNS)

    def decode_one(self, dataset: int, shard: int, row: int, frame_indices: np.ndarray, seed: int) -> dict:
        spec = self.spec
        uri = spec.shard_uris[dataset][shard]
        video = self.reader.read(uri, int(row))
        kind = spec.kinds[dataset]
        augmentation = spec.video_augmentation if kind == "video" else spec.pseudo_augmentation
        if kind == "video" and int(np.max(frame_indices)) >= int(video["length"]):
            raise ValueError(f"{uri} row {row}: frame {int(np.max(frame_indices))} beyond the video's {video['length']} frames")
        return aug_mod.augment_clip(video, frame_indices, kind, int(seed), augmentation, spec.class_index[dataset])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["position"])
        frames = np.empty(n, dtype=object)
        masks = np.empty(n, dtype=object)
        gt_ids = np.empty(n, dtype=object)
        gt_classes = np.empty(n, dtype=object)
        sizes = []
        for i in range(n):
            clip = self.decode_one(int(batch["dataset_index"][i]), int(batch["shard"][i]), int(batch["row"][i]),
                                   np.asarray(batch["frame_indices"][i]), int(batch["aug_seed"][i]))
            frames[i] = clip["frames"]
            masks[i] = np.packbits(clip["masks"].reshape(-1))
            gt_ids[i] = clip["gt_ids"]
            gt_classes[i] = clip["gt_classes"]
            sizes.append(clip["image_sizes"])
        return {
            "position": np.asarray(batch["position"], dtype=np.int64),
            "dataset_index": np.asarray(batch["dataset_index"], dtype=np.int64),
            "video_id": np.asarray(batch["video_id"], dtype=np.int64),
            "frame_indices": np.stack([np.asarray(f, dtype=np.int64) for f in batch["frame_indices"]]),
            "image_sizes": np.stack(sizes),
            "frames": frames,
            "masks_packed": masks,
            "gt_ids": gt_ids,
            "gt_classes": gt_classes,
        }


def decoder_spec(data_config, manifests: Sequence[Manifest]) -> DecoderSpec:
    video_aug, pseudo_aug = augmentations_from_config(data_config)
    return DecoderSpec(
        shard_uris=tuple(tuple(m.shard_uri(s) for s in range(len(m.shard_paths))) for m in manifests),
        kinds=tuple(m.kind for m in manifests),
        class_index=tuple(contiguous_index(m.categories) for m in manifests),
        video_augmentation=video_aug,
        pseudo_augmentation=pseudo_aug,
    )


def clip_dataset(
    data_config,
    manifests: Sequence[Manifest],
    index: ClipIndex,
    *,
    clips_per_block: int,
    decode_workers: Optional[int] = None,
    cpus_per_decoder: float = 1.0,
    worker_env: Optional[dict] = None,
):
    """The Ray Dataset of the clips of `index`, in index order: blocks of `clips_per_block` index
    rows, read, decoded and augmented by an actor pool of `ClipDecoder`s.

    Each row holds ``frames`` (T,3,h,w) uint8, ``masks_packed`` (np.packbits of the (T,N,h,w)
    masks), ``gt_ids`` (T,N), ``gt_classes`` (N,), ``image_sizes`` (T,2), ``video_id``,
    ``frame_indices`` (T,), ``dataset_index``, ``position``. worker_env: environment variables for
    the decoder actors (e.g. the AWS_* ones); by default they inherit their caller's.
    """
    import ray

    from pipelines.ray_runtime import runtime_env_vars

    table = clip_index_table(index, manifests)
    blocks = [table.slice(i, clips_per_block) for i in range(0, table.num_rows, clips_per_block)] or [table]
    return ray.data.from_arrow(blocks).map_batches(
        ClipDecoder,
        fn_constructor_kwargs={"spec": decoder_spec(data_config, manifests)},
        batch_size=clips_per_block,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=decode_workers or data_config.decode_workers),
        num_cpus=cpus_per_decoder,
        **({"runtime_env": runtime_env_vars(worker_env)} if worker_env else {}),
    )


def _clip_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(batch["position"])
    return [
        {
            "frames": batch["frames"][i],
            "masks_packed": batch["masks_packed"][i],
            "gt_ids": batch["gt_ids"][i],
            "gt_classes": batch["gt_classes"][i],
            "image_sizes": batch["image_sizes"][i],
            "video_id": batch["video_id"][i],
            "frame_indices": batch["frame_indices"][i],
            "dataset_index": batch["dataset_index"][i],
        }
        for i in range(n)
    ]


def iter_clip_batches(
    dataset_shard,
    batch_size: int,
    size_divisibility: int = 32,
    *,
    drop_last: bool = False,
    prefetch_batches: int = 2,
    return_positions: bool = False,
) -> Iterator[ClipBatch] | Iterator[tuple[ClipBatch, np.ndarray]]:
    """Padded `ClipBatch`es from a Ray Data dataset or a Train worker's shard (`get_dataset_shard`).

    With `return_positions`, also yields the epoch positions of the clips in each batch (for
    exact mid-epoch resumption bookkeeping).
    """
    for batch in dataset_shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                            prefetch_batches=prefetch_batches):
        clip_batch = ClipBatch.from_numpy(collate_clips(_clip_rows(batch), size_divisibility))
        if return_positions:
            yield clip_batch, np.asarray(batch["position"], dtype=np.int64)
        else:
            yield clip_batch
