"""The tracker's options and the diagnostic codes of its per-frame results."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


# Diagnostic codes of ``FrameTrackResult.assigned_ids`` (as recorded by the reference fixture).
BELOW_SELECT_THR = -3
REMOVED_BY_NMS = -2
NO_TRACK_ID = -1


@dataclass(frozen=True)
class TrackerConfig:
    """Options of the online tracker; field names are the released config keys in snake_case."""

    match_metric: Literal["bisoftmax", "cosine"] = "bisoftmax"
    match_score_thr: float = 0.3
    match_type: Literal["greedy", "hungarian"] = "greedy"
    frame_weight: bool = True
    temporal_score_type: Literal["mean", "max"] = "mean"
    inference_select_thr: float = 0.01
    init_score_thr: float = 0.01
    mask_nms_thr: float = 0.6
    noise_frame_num: int = 8
    # Kept for config compatibility: the released tracker reads it but never uses it.
    noise_frame_ratio: float = 0.4
    suppress_frame_num: int = 3
    none_frame_num: int = 2
    # "temporally_weighted" is the released "temporally_weighted_softmax" (a score- and
    # recency-weighted mean of the cached embeddings; there is no softmax in it).
    embed_type: Literal["similarity_guided", "momentum", "last", "temporally_weighted"] = "similarity_guided"
    momentum: float = 0.75
    num_dead_frames: int = 20
    max_cache: int = 10

    def __post_init__(self) -> None:
        checks = {
            "match_metric": (self.match_metric, ("bisoftmax", "cosine")),
            "match_type": (self.match_type, ("greedy", "hungarian")),
            "temporal_score_type": (self.temporal_score_type, ("mean", "max")),
            "embed_type": (self.embed_type, ("similarity_guided", "momentum", "last", "temporally_weighted")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"TrackerConfig.{name}={value!r}; expected one of {allowed}")
        if self.max_cache < 1:
            raise ValueError(f"TrackerConfig.max_cache must be >= 1, got {self.max_cache}")
