"""Each Ray Train worker's share of the run's clip stream, as a Ray Data dataset.

The run trains on one clip stream: position p of the run's clip index (`sampling.build_clip_index`
over ``max_iter x batch_size`` positions, epoch 0: videos drawn from consecutive random
permutations, as detectron2's infinite TrainingSampler) always names the same clip with the same
augmentation seed. Step s (0-based) takes the ``batch_size`` positions ``[s*B, (s+1)*B)``; with W
workers, rank r takes the b = B/W positions ``s*B + r*b + [0, b)``.

Why not `TorchTrainer(datasets=...)` with its streaming split: that split hands blocks to whichever
worker asks first, so which clip lands on which worker (and so the padded batch each worker
builds) changes from run to run, and a dataset built by the driver restarts at the driver's
position when Ray Train restarts a failed worker group from a later checkpoint. Building the rank's
dataset inside the worker, from the checkpoint's data position, makes a resumed run the same run:
every worker decodes exactly its own clips, in order, from where the checkpoint left off.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np

from pipelines.data.pipeline import clip_dataset, clip_index_for, iter_clip_batches, load_train_manifests
from pipelines.data.sampling import ClipIndex


def rank_positions(start_step: int, num_steps: int, batch_size: int, world_size: int, rank: int) -> np.ndarray:
    """int64 (num_steps * b,) clip positions of `rank` for steps [start_step, start_step + num_steps)."""
    if batch_size % world_size:
        raise ValueError(f"train.batch_size {batch_size} must be a multiple of the {world_size} workers")
    per_rank = batch_size // world_size
    steps = np.arange(start_step, start_step + num_steps, dtype=np.int64)
    return (steps[:, None] * batch_size + rank * per_rank + np.arange(per_rank, dtype=np.int64)[None, :]).reshape(-1)


def select(index: ClipIndex, positions: np.ndarray) -> ClipIndex:
    """The clips of `index` at `positions` (positions are row numbers of an epoch index)."""
    return ClipIndex(index.position[positions], index.dataset_index[positions], index.video_row[positions],
                     index.frame_indices[positions], index.aug_seed[positions])


def run_clip_index(data_config: Any, manifests: Sequence[Any], ratios: Sequence[float], *, seed: int,
                   total_clips: int) -> ClipIndex:
    """The whole run's clip stream (`total_clips` = max_iter x batch_size positions)."""
    return clip_index_for(data_config, manifests, ratios, epoch=0, seed=seed, num_clips=total_clips)


def rank_clip_dataset(
    data_config: Any,
    *,
    seed: int,
    max_iter: int,
    batch_size: int,
    start_step: int,
    world_size: int,
    rank: int,
    cpus_per_decoder: float = 0.25,
    decode_workers: Optional[int] = None,
):
    """The Ray Dataset of rank `rank`'s clips from `start_step` to the end of the run, in order.

    Rows are those of `pipelines.data.pipeline.clip_dataset`; `iter_rank_batches` turns them into
    `ClipBatch`es of b = batch_size / world_size clips.
    """
    specs = list(data_config.train)
    manifests = load_train_manifests(specs)
    index = run_clip_index(data_config, manifests, [s.ratio for s in specs], seed=seed,
                           total_clips=max_iter * batch_size)
    positions = rank_positions(start_step, max_iter - start_step, batch_size, world_size, rank)
    return clip_dataset(data_config, manifests, select(index, positions), clips_per_block=batch_size // world_size,
                        decode_workers=decode_workers, cpus_per_decoder=cpus_per_decoder)


def iter_rank_batches(dataset: Any, per_rank_batch: int, size_divisibility: int, expected: np.ndarray,
                      prefetch_batches: int = 2) -> Iterator[Any]:
    """`ClipBatch`es of the rank's dataset, checked against the positions it must deliver in order."""
    done = 0
    for batch, positions in iter_clip_batches(dataset, per_rank_batch, size_divisibility, drop_last=False,
                                              prefetch_batches=prefetch_batches, return_positions=True):
        want = expected[done:done + len(positions)]
        if not np.array_equal(positions, want):
            raise RuntimeError(f"clip stream out of order: got positions {positions.tolist()}, expected {want.tolist()} "
                               "(Ray Data must preserve order for a deterministic run)")
        done += len(positions)
        yield batch
