"""The epoch's clip index, built up front: which dataset, which video, which frames, which seed.

Sampling is a pure function of (seed, epoch, dataset sizes, config): position p of epoch e always
names the same clip, so training resumes mid-epoch exactly (start at the next position) and no
shuffle is needed in the streaming hot path. Everything is vectorised over clips.

As CTVIS: the dataset of each clip is drawn independently with probabilities proportional to the
configured ratios (its CombinedDataLoader); within a dataset, videos come from consecutive random
permutations (detectron2's TrainingSampler); the frames are a reference frame drawn uniformly
plus SAMPLING_FRAME_NUM-1 frames drawn *with replacement* (``np.random.choice`` in the released
mapper) from the other frames within +-SAMPLING_FRAME_RANGE, sorted. A one-frame video repeats its
frame. Pseudo-videos get fake frame indices drawn the same way from a random length in [16, 48],
as the released COCO mapper does (the image itself is every frame).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PSEUDO_VIDEO_LENGTHS = (16, 49)  # [low, high) of the fake length of a pseudo-video


@dataclasses.dataclass(frozen=True)
class ClipIndex:
    """P clips of T frames. Arrays are aligned on the clip position."""

    position: np.ndarray  # int64 (P,) position in the epoch
    dataset_index: np.ndarray  # int64 (P,)
    video_row: np.ndarray  # int64 (P,) row in the dataset's manifest video table
    frame_indices: np.ndarray  # int64 (P,T)
    aug_seed: np.ndarray  # int64 (P,)

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def slice(self, start: int, stop: int | None = None) -> "ClipIndex":
        s = slice(start, stop)
        return ClipIndex(self.position[s], self.dataset_index[s], self.video_row[s], self.frame_indices[s], self.aug_seed[s])


def sample_frames(rng: np.random.Generator, lengths: np.ndarray, num_frames: int, frame_range: int,
                  shuffle: bool = False) -> np.ndarray:
    """(P,T) frame indices for P videos of `lengths` frames (vectorised CTVIS clip sampling)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    P = lengths.shape[0]
    ref = rng.integers(0, lengths)  # (P,)
    start = np.maximum(0, ref - frame_range)
    end = np.minimum(lengths, ref + frame_range + 1)
    window = end - start - 1  # candidates other than the reference frame
    draws = rng.integers(0, np.maximum(window, 1)[:, None], size=(P, max(num_frames - 1, 0)))
    others = start[:, None] + draws
    others = others + (others >= ref[:, None])  # skip over the reference frame
    others = np.where(window[:, None] > 0, others, ref[:, None])
    frames = np.sort(np.concatenate([others, ref[:, None]], axis=1), axis=1)
    if shuffle:
        frames = rng.permuted(frames, axis=1)
    return frames


def build_clip_index(
    lengths: Sequence[np.ndarray],
    kinds: Sequence[str],
    ratios: Sequence[float],
    num_clips: int,
    num_frames: int,
    frame_range: int,
    seed: int,
    epoch: int,
    shuffle_frames: bool = False,
) -> ClipIndex:
    """The whole epoch's clip index (P = num_clips) over D datasets.

    lengths[d]: int (V_d,) frame counts of dataset d's videos (1 for images); kinds[d]: "video" or
    "image"; ratios[d]: its sampling weight.
    """
    D = len(lengths)
    if not (D == len(kinds) == len(ratios)) or D == 0:
        raise ValueError("lengths, kinds and ratios need one entry per dataset (at least one)")
    for d in range(D):
        if len(lengths[d]) == 0:
            raise ValueError(f"dataset {d}: no videos to sample from")
    weights = np.asarray(ratios, dtype=np.float64)
    if (weights <= 0).any():
        raise ValueError(f"ratios: must be > 0, got {list(ratios)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xC7]))
    P = int(num_clips)
    dataset = rng.choice(D, size=P, p=weights / weights.sum()) if D > 1 else np.zeros(P, dtype=np.int64)
    dataset = dataset.astype(np.int64)
    video_row = np.zeros(P, dtype=np.int64)
    clip_lengths = np.ones(P, dtype=np.int64)
    for d in range(D):
        where = np.nonzero(dataset == d)[0]
        V = len(lengths[d])
        rounds = -(-len(where) // V) if len(where) else 0
        picks = np.concatenate([rng.permutation(V) for _ in range(rounds)]) if rounds else np.zeros(0, np.int64)
        video_row[where] = picks[: len(where)]
        if kinds[d] == "video":
            clip_lengths[where] = np.asarray(lengths[d], dtype=np.int64)[video_row[where]]
        elif kinds[d] == "image":
            clip_lengths[where] = rng.integers(*PSEUDO_VIDEO_LENGTHS, size=len(where))
        else:
            raise ValueError(f"dataset {d}: kind must be 'video' or 'image', got {kinds[d]!r}")
    frames = sample_frames(rng, clip_lengths, num_frames, frame_range, shuffle_frames)
    seeds = rng.integers(0, np.iinfo(np.int64).max, size=P, dtype=np.int64)
    return ClipIndex(np.arange(P, dtype=np.int64), dataset, video_row, frames, seeds)
