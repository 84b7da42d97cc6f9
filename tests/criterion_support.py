"""Per-frame criterion targets from dict-shaped clips, for the criterion and matcher tests. Test-only:
the model builds its targets from a `ClipBatch` (`models.model.CTVISModel._frame_targets`)."""
from __future__ import annotations

from typing import Sequence, TypedDict

import torch

from models.matcher import FrameTarget


class ClipTargets(TypedDict):
    """Ground truth of one clip of T frames with N instances.

    ids: (T, N) int64 track id of instance n at frame t, -1 where it is absent.
    labels: (N,) int64 class ids in [0, K).
    masks: (T, N, H, W) bool/float binary masks (all zero where absent).
    """

    ids: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def _check_clip(clip: ClipTargets, where: str) -> tuple[int, int]:
    ids, labels, masks = clip["ids"], clip["labels"], clip["masks"]
    if ids.dim() != 2:
        raise ValueError(f"{where}['ids'] must be (T,N), got shape {tuple(ids.shape)}")
    num_frames, num_instances = ids.shape
    if labels.shape != (num_instances,):
        raise ValueError(f"{where}['labels'] must be ({num_instances},), got shape {tuple(labels.shape)}")
    if masks.dim() != 4 or masks.shape[:2] != (num_frames, num_instances):
        raise ValueError(f"{where}['masks'] must be ({num_frames},{num_instances},H,W), got shape {tuple(masks.shape)}")
    return num_frames, num_instances


def frame_targets_from_clip(clip: ClipTargets, *, keep_absent: bool = False) -> list[FrameTarget]:
    """Split a clip's targets into its T per-frame targets.

    With ``keep_absent=False`` (the set criterion) frame t keeps only the instances with
    ``ids[t] != -1``, in instance order. With ``keep_absent=True`` every frame keeps all N
    instances, absent ones with their (empty) masks: the released CT-CL matches those too, so
    that every instance has a query at every frame.
    """
    num_frames, _ = _check_clip(clip, "clip")
    frames: list[FrameTarget] = []
    for t in range(num_frames):  # T frames, not items: a frame's instance subset is a boolean index
        present = clip["ids"][t] != -1
        if keep_absent:
            frames.append(FrameTarget(labels=clip["labels"], masks=clip["masks"][t]))
        else:
            frames.append(FrameTarget(labels=clip["labels"][present], masks=clip["masks"][t][present]))
    return frames


def frame_targets_from_clips(clips: Sequence[ClipTargets], *, keep_absent: bool = False) -> list[FrameTarget]:
    """Per-frame targets of B clips, flattened video-major (row ``b*T + t``)."""
    return [frame for clip in clips for frame in frame_targets_from_clip(clip, keep_absent=keep_absent)]
