"""Video-level post-processing of the tracker output and clip-chunked whole-video inference.

:func:`inference_video` reproduces the released ``CTVISModel.inference_video``: softmax over the
tracks' temporal logits, drop the no-object class, top-k over (track x class), masks upsampled to
the padded image tensor size (bilinear, align_corners=False), cropped to the unpadded image size,
resized to the output (height, width), binarised ``> 0``, and every score multiplied by the mask
confidence ``sum(sigmoid * mask) / (sum(mask) + 1e-6)`` computed at the output resolution.

It gives the same labels and bit-identical masks, and scores within float32 summation noise, while
doing far less work than the released per-entry loop:

* a track that appears in several top-k entries (one per class) is upsampled once and shared;
* frames where a track's mask logits have no positive pixel produce an all-False mask and add
  nothing to the confidence (bilinear weights are a convex combination), so they are skipped;
* a same-size second resize is the identity and is skipped; the sigmoid is only evaluated where
  the mask is on.

Not done, on purpose: interpolating only a window around the object. It looks exact for
power-of-two scales, but the CPU kernel's rounding depends on where a pixel sits in the output
buffer, so a cropped interpolation differs from the full one in the last bit (measured), which can
flip mask pixels whose logit is ~0.

Shapes: N tracks, T frames, K classes (K+1 logits), h, w mask size, H, W output size, k top-k.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.tracker import TrackerConfig, VideoTracker, VideoTracks


@dataclass(frozen=True)
class VideoInstances:
    """Post-processed video predictions.

    scores (k,) float, labels (k,) long in [0, K), and the masks as ``track_masks`` (U, T, H, W)
    bool of the U distinct tracks among the top-k plus ``mask_index`` (k,) long into them: entries
    of the same track share one mask. ``masks`` materialises the (k, T, H, W) bool tensor.
    """

    scores: Tensor
    labels: Tensor
    track_masks: Tensor
    mask_index: Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def masks(self) -> Tensor:
        """(k, T, H, W) bool."""
        return self.track_masks[self.mask_index.to(self.track_masks.device)]


def _chunk_statistics(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Binarised masks and the confidence numerator / denominator per plane.

    logits: (p, H', W') upsampled mask logits. Returns bool (p, H', W'), float64 (p,) sum of
    sigmoid over the positive pixels and float64 (p,) their count.
    """
    binary = logits > 0
    # The sigmoid is only needed where the mask is on (a small part of the frame): selecting those
    # pixels plane by plane is ~2x faster than a full-frame sigmoid (measured), and each plane keeps
    # torch's pairwise float32 sum. p is a chunk of planes, not a per-pixel loop.
    numerator = torch.stack([plane[on].sigmoid().sum() for plane, on in zip(logits, binary)])
    return binary, numerator.double(), binary.flatten(1).sum(1).double()


@torch.no_grad()
def inference_video(pred_logits: Tensor, pred_masks: Tensor, padded_size: tuple[int, int],
                    image_size: tuple[int, int], output_size: tuple[int, int], num_topk: int,
                    planes_per_chunk: int = 25, mask_device: torch.device | str | None = None,
                    ) -> VideoInstances:
    """Top-k video instances from tracker outputs (the released ``inference_video``).

    pred_logits (N, K+1) temporal logits of the tracks; pred_masks (N, T, h, w) mask logits (zero
    where a track is absent). padded_size: the (H_pad, W_pad) of the padded image tensor the
    network saw; image_size: the unpadded (H_img, W_img) inside it; output_size: the (height,
    width) to predict at. ``planes_per_chunk`` bounds the memory of the upsampling (the released
    TEST_INSTANCE_CHUNK_SIZE x TEST_INTERPOLATE_CHUNK_SIZE = 5 x 5 frames); ``mask_device`` is
    where the output masks are stored (default: the input's device; "cpu" for long videos).
    """
    if pred_logits.dim() != 2 or pred_masks.dim() != 4 or pred_logits.shape[0] != pred_masks.shape[0]:
        raise ValueError(f"inference_video expects pred_logits (N, K+1) and pred_masks (N, T, h, w) with the same N; "
                         f"got {tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}")
    padded_h, padded_w = (int(v) for v in padded_size)
    image_h, image_w = (int(v) for v in image_size)
    out_h, out_w = (int(v) for v in output_size)
    if image_h > padded_h or image_w > padded_w:
        raise ValueError(f"inference_video: image_size {image_size} exceeds padded_size {padded_size}")
    num_tracks, num_frames, mask_h, mask_w = pred_masks.shape
    num_classes = pred_logits.shape[1] - 1
    device = pred_masks.device
    mask_device = torch.device(mask_device) if mask_device is not None else device
    if num_tracks == 0:
        return VideoInstances(pred_logits.new_zeros(0), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0, num_frames, out_h, out_w, dtype=torch.bool, device=mask_device),
                              torch.zeros(0, dtype=torch.long), (out_h, out_w))

    scores = F.softmax(pred_logits, dim=-1)[:, :-1]
    # The released code asks for exactly num_topk (and fails when N*K is smaller); clamp instead.
    num_entries = min(num_topk, scores.numel())
    topk_scores, topk_indices = scores.flatten().topk(num_entries, sorted=True)
    labels = topk_indices % num_classes
    tracks = topk_indices // num_classes
    unique_tracks, mask_index = torch.unique(tracks, return_inverse=True)
    masks = pred_masks[unique_tracks]                                        # (U, T, h, w)
    num_unique = masks.shape[0]

    # A plane whose logits have no positive pixel upsamples to non-positive values only (bilinear
    # weights are >= 0): an all-False mask that adds nothing to the confidence. Skip it.
    present = (masks > 0).flatten(2).any(dim=-1)                             # (U, T)
    present_host = present.cpu().numpy()

    track_masks = torch.zeros(num_unique, num_frames, out_h, out_w, dtype=torch.bool, device=mask_device)
    numerator = torch.zeros(num_unique, dtype=torch.float64, device=device)
    denominator = torch.zeros(num_unique, dtype=torch.float64, device=device)

    # Every (track, frame) plane with a positive logit, upsampled in chunks of planes_per_chunk.
    # F.interpolate computes each plane independently of the batch it is in, so regrouping the
    # released (5 entries x 5 frames) chunks into planes changes no bit.
    plane_track, plane_frame = (torch.from_numpy(a) for a in np.nonzero(present_host))
    for start in range(0, plane_track.numel(), planes_per_chunk):
        chunk_track = plane_track[start:start + planes_per_chunk].to(device)
        chunk_frame = plane_frame[start:start + planes_per_chunk].to(device)
        planes = masks[chunk_track, chunk_frame][:, None]                    # (p, 1, h, w)
        planes = F.interpolate(planes, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
        planes = planes[:, :, :image_h, :image_w]
        # A same-size bilinear resize is the identity (weights 1 and 0): skip it.
        if (out_h, out_w) != (image_h, image_w):
            planes = F.interpolate(planes, size=(out_h, out_w), mode="bilinear", align_corners=False)
        binary, plane_numerator, plane_denominator = _chunk_statistics(planes[:, 0])
        numerator.index_add_(0, chunk_track, plane_numerator)
        denominator.index_add_(0, chunk_track, plane_denominator)
        track_masks[chunk_track.to(mask_device), chunk_frame.to(mask_device)] = binary.to(mask_device)

    # float32 like the released code (its count + 1e-6 rounds in float32).
    confidence = numerator.to(topk_scores.dtype) / (denominator.to(topk_scores.dtype) + 1e-6)
    return VideoInstances(topk_scores * confidence[mask_index], labels, track_masks, mask_index.cpu(),
                          (out_h, out_w))


@torch.no_grad()
def infer_video(frame_forward: Callable[[Tensor], Mapping[str, Tensor]], frames: Tensor | Iterable[Tensor],
                tracker_config: TrackerConfig, image_size: tuple[int, int], output_size: tuple[int, int],
                num_topk: int, chunk_size: int = 5, device: torch.device | str | None = None,
                mask_storage_device: torch.device | str | None = None,
                planes_per_chunk: int = 25) -> tuple[VideoInstances, VideoTracks]:
    """Online inference over a whole video in bounded memory.

    frame_forward(images (t, 3, H_pad, W_pad)) -> {"pred_logits": (t, Q, K+1), "pred_masks":
    (t, Q, h, w), "pred_embeds": (t, Q, C)} is the caller's network (normalised, padded input).
    ``frames`` is either a (T, 3, H_pad, W_pad) tensor (fed ``chunk_size`` frames at a time, e.g.
    kept on the CPU and moved to ``device`` per chunk) or an iterable of such clips. Each chunk's
    outputs go frame by frame through the streaming tracker; then the tracks are post-processed.
    """
    if chunk_size < 1:
        raise ValueError(f"infer_video: chunk_size must be >= 1, got {chunk_size}")
    if isinstance(frames, Tensor):
        if frames.dim() != 4:
            raise ValueError(f"infer_video: frames must be (T, 3, H_pad, W_pad), got {tuple(frames.shape)}")
        clips: Iterable[Tensor] = (frames[start:start + chunk_size] for start in range(0, frames.shape[0], chunk_size))
    else:
        clips = frames
    tracker = VideoTracker(tracker_config, device=device, mask_storage_device=mask_storage_device)
    padded_size = None
    for clip_index, clip in enumerate(clips):
        if padded_size is None:
            padded_size = tuple(clip.shape[-2:])
        elif tuple(clip.shape[-2:]) != padded_size:
            raise ValueError(f"infer_video: clip {clip_index} has size {tuple(clip.shape[-2:])}, "
                             f"expected {padded_size}")
        if device is not None:
            clip = clip.to(device)
        outputs = frame_forward(clip)
        for key in ("pred_logits", "pred_masks", "pred_embeds"):
            if key not in outputs:
                raise KeyError(f"infer_video: frame_forward output of clip {clip_index} lacks {key!r}")
            if outputs[key].shape[0] != clip.shape[0]:
                raise ValueError(f"infer_video: clip {clip_index} {key} has {outputs[key].shape[0]} frames, "
                                 f"expected {clip.shape[0]}")
        for t in range(clip.shape[0]):
            tracker.step(outputs["pred_logits"][t], outputs["pred_masks"][t], outputs["pred_embeds"][t])
    if padded_size is None:
        raise ValueError("infer_video: the video has no frames")
    tracks = tracker.finalize()
    instances = inference_video(tracks.pred_logits, tracks.pred_masks, padded_size, image_size, output_size,
                                num_topk, planes_per_chunk=planes_per_chunk, mask_device=mask_storage_device)
    return instances, tracks
