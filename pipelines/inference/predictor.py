"""One model over one video -> official results entries: the one implementation of "run a model over
a split", used by `ctvis predict` (inside Ray Data actors) and by the validation of `ctvis train`
(in process), so both give the same results for the same weights.

A video goes: frames decoded and resized as the test mapper does (`videos.read_test_video`) ->
`CTVISModel.infer_video` (network clip by clip, online tracker, post-processing at the original
size) -> one results entry per top-k instance, each frame's mask as compressed RLE. With an output
cache, the network's outputs are also recorded (`cache.OutputRecorder`); `replay_cached` runs the
tracker and post-processing again from them, without the network.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from models.model import CTVISConfig, track_network_outputs
from models.video_inference import VideoInstances
from pipelines.inference.cache import CachedVideo, OutputRecorder
from pipelines.inference.videos import TestVideo


@dataclasses.dataclass
class VideoPrediction:
    video_id: int
    results: list[dict]  # official results entries of the video
    instances: VideoInstances  # the post-processed predictions (for overlays)


def instances_results(video_id: int, instances: VideoInstances, num_frames: int,
                      category_ids: Sequence[int]) -> list[dict]:
    """Results entries of one video's top-k instances (in score order), each frame's mask as
    compressed RLE (an empty mask where the instance is absent, as CTVIS writes it).

    Entries of the same track share its RLEs: each distinct track is encoded once, frame by frame
    from its compact windows, never as the dense (k, T, H, W) tensor."""
    scores = instances.scores.float().cpu().numpy()
    labels = instances.labels.cpu().numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(f"video {video_id}: label {int(labels.max())} has no category id "
                         f"(the split has {len(category_ids)} categories)")
    mask_index = instances.mask_index.cpu().numpy()
    height, width = instances.image_size
    encoded: dict[int, list[dict]] = {}
    for track in np.unique(mask_index).tolist():
        masks = np.zeros((height, width, num_frames), dtype=np.uint8, order="F")   # (H, W, T) as pycocotools reads
        if instances.windows is None:
            masks[:] = np.moveaxis(instances.track_masks[track].cpu().numpy(), 0, -1)
        else:
            windows = instances.windows
            for index in np.flatnonzero(windows.track == track).tolist():
                top, left, bottom, right = windows.box[index].tolist()
                masks[top:bottom, left:right, int(windows.frame[index])] = windows.masks[index].cpu().numpy()
        encoded[track] = [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
                          for rle in mask_utils.encode(masks)]
    return [{"video_id": int(video_id), "category_id": int(category_ids[label]), "score": float(score),
             "segmentations": encoded[track]}
            for score, label, track in zip(scores.tolist(), labels.tolist(), mask_index.tolist())]


class VideoPredictor:
    """A CTVIS model (eval mode, on `device`) over test videos of a split whose contiguous model
    labels map to `category_ids`."""

    def __init__(self, model: Any, category_ids: Sequence[int], device: torch.device | str):
        self.model = model
        self.category_ids = list(category_ids)
        self.device = torch.device(device)

    @torch.no_grad()
    def predict(self, video: TestVideo, recorder: Optional[OutputRecorder] = None) -> VideoPrediction:
        frames = torch.from_numpy(video.frames)  # moved to the device clip by clip
        instances = self.model.infer_video(frames, output_size=video.original_size, on_network_outputs=recorder)
        return VideoPrediction(video.video_id, instances_results(video.video_id, instances, frames.shape[0],
                                                                 self.category_ids), instances)


@torch.no_grad()
def replay_cached(config: CTVISConfig, cached: CachedVideo, category_ids: Sequence[int],
                  device: torch.device | str = "cpu") -> VideoPrediction:
    """The tracker and post-processing of `config` over a video's cached network outputs."""
    instances = track_network_outputs(config, cached.clips, cached.padded_size, cached.image_size,
                                      cached.output_size, cached.num_frames, device)
    return VideoPrediction(cached.video_id, instances_results(cached.video_id, instances, cached.num_frames,
                                                              category_ids), instances)
