"""The online tracker of CTVIS, at parity with the released ``SimpleTracker`` + ``MemoryBank``.

    tracker = VideoTracker(TrackerConfig())
    tracker.step_clip(logits (T, Q, K+1), mask_logits (T, Q, h, w), embeds (T, Q, C))   # per clip
    tracks = tracker.finalize()                                                         # VideoTracks

Modules, in the order a frame goes through them:

- `config`: `TrackerConfig` (the released keys) and the diagnostic codes of the per-frame results;
- `detection`: select threshold, mask binarisation and mask NMS for a clip of frames at once (the
  full-mask passes in torch: `MaskPasses`);
- `association`: frame-weighted greedy matching (released) and Hungarian matching;
- `memory_bank`: the tracklets' re-id embeddings and the fused embedding each match compares with;
- `video_tracker`: `VideoTracker` (the streaming state; settled frames for bounded-memory callers),
  `VideoTracks`, `track_video`;
- `cpu_kernel`: the same full-mask passes on numpy views of CPU tensors (`CpuMaskPasses`), and the
  one switch between the two (`mask_passes_for`). Everything else is one torch path.
"""
from .association import greedy_match, hungarian_match
from .config import BELOW_SELECT_THR, NO_TRACK_ID, REMOVED_BY_NMS, TrackerConfig
from .detection import band_height, binarize_mask_logits, clip_mask_nms_keep, mask_nms_keep
from .video_tracker import FrameTrackResult, SettledFrame, VideoTracker, VideoTracks, track_video

__all__ = [
    "BELOW_SELECT_THR", "NO_TRACK_ID", "REMOVED_BY_NMS", "FrameTrackResult", "SettledFrame", "TrackerConfig", "VideoTracker",
    "VideoTracks", "band_height", "binarize_mask_logits", "clip_mask_nms_keep", "greedy_match", "hungarian_match",
    "mask_nms_keep", "track_video",
]
