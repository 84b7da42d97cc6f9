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
* when the first resize is an exact power-of-two upscale (the mask head's stride 4) and the second
  one is the identity, only a window around each track's positive pixels is interpolated. With a
  power-of-two scale the source coordinate ``scale * (dst + 0.5) - 0.5`` is exact in floating point,
  so interpolating a crop gives bit-for-bit the values of the full-frame interpolation inside the
  crop (border rows/columns, whose clamping differs, are cut off by a margin); outside the window
  every output pixel mixes only non-positive logits and is False.

Shapes: N tracks, T frames, K classes (K+1 logits), h, w mask size, H, W output size, k top-k.
"""
from __future__ import annotations

import math
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


def _power_of_two_factor(source: int, target: int) -> int | None:
    """k with target == source * 2**k (k >= 0), else None."""
    if source <= 0 or target < source or target % source:
        return None
    ratio = target // source
    return int(math.log2(ratio)) if ratio & (ratio - 1) == 0 else None


def _exact_output_range(out_lo: int, out_hi: int, src_lo: int, src_hi: int, src_size: int, factor: int
                        ) -> tuple[int, int, int]:
    """Window arithmetic for an exact power-of-two upscale by ``factor``.

    Interpolating source rows [src_lo, src_hi) to ``(src_hi - src_lo) * factor`` rows reproduces the
    full-frame result for output rows d (full-frame coordinates) whose source coordinate
    ``(d + 0.5) / factor - 0.5`` is not clamped differently: it must be >= src_lo (unless src_lo is
    the frame border) and its floor < src_hi - 1 (unless src_hi is the border). Returns the crop
    offset (src_lo * factor) and the exact full-frame output range clipped to [out_lo, out_hi).
    """
    first, last = out_lo, out_hi
    if src_lo > 0:
        # smallest d with (d + 0.5) / factor - 0.5 >= src_lo
        first = max(first, math.ceil((src_lo + 0.5) * factor - 0.5))
    if src_hi < src_size:
        # largest d with floor((d + 0.5) / factor - 0.5) <= src_hi - 2, i.e. (d+0.5)/factor - 0.5 < src_hi - 1
        last = min(last, math.ceil((src_hi - 0.5) * factor - 0.5))
    return src_lo * factor, first, last


def _chunk_statistics(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Binarised masks and the confidence numerator / denominator per plane.

    logits: (p, H', W') upsampled mask logits. Returns bool (p, H', W'), float64 (p,) sum of
    sigmoid over the positive pixels and float64 (p,) their count.
    """
    binary = logits > 0
    numerator = torch.where(binary, logits.sigmoid(), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return binary, numerator.flatten(1).sum(1).double(), binary.flatten(1).sum(1).double()


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

    # Frames whose logits have no positive pixel give an all-False mask and add nothing.
    positive = masks > 0
    rows_any = positive.any(dim=-1)                                          # (U, T, h)
    cols_any = positive.any(dim=-2)                                          # (U, T, w)
    present = rows_any.any(dim=-1)                                           # (U, T)
    row_lo = torch.where(rows_any, torch.arange(mask_h, device=device), mask_h).amin(-1)
    row_hi = torch.where(rows_any, torch.arange(mask_h, device=device), -1).amax(-1) + 1
    col_lo = torch.where(cols_any, torch.arange(mask_w, device=device), mask_w).amin(-1)
    col_hi = torch.where(cols_any, torch.arange(mask_w, device=device), -1).amax(-1) + 1
    boxes = torch.stack([row_lo, row_hi, col_lo, col_hi], dim=-1).cpu().numpy()  # (U, T, 4)
    present_host = present.cpu().numpy()

    track_masks = torch.zeros(num_unique, num_frames, out_h, out_w, dtype=torch.bool, device=mask_device)
    numerator = torch.zeros(num_unique, dtype=torch.float64, device=device)
    denominator = torch.zeros(num_unique, dtype=torch.float64, device=device)

    factor_h = _power_of_two_factor(mask_h, padded_h)
    factor_w = _power_of_two_factor(mask_w, padded_w)
    windowed = (factor_h is not None and factor_w is not None and (out_h, out_w) == (image_h, image_w))

    if windowed:
        scale_h, scale_w = 2 ** factor_h, 2 ** factor_w
        frames_per_chunk = max(1, planes_per_chunk)
        for unique_index in range(num_unique):
            frames = np.flatnonzero(present_host[unique_index])
            for start in range(0, frames.size, frames_per_chunk):
                chunk_frames = frames[start:start + frames_per_chunk]
                box = boxes[unique_index, chunk_frames]
                # Source window = positive pixels + 2 (so every possibly-positive output is exact).
                src_r0, src_r1 = max(0, int(box[:, 0].min()) - 2), min(mask_h, int(box[:, 1].max()) + 2)
                src_c0, src_c1 = max(0, int(box[:, 2].min()) - 2), min(mask_w, int(box[:, 3].max()) + 2)
                offset_r, out_r0, out_r1 = _exact_output_range(0, image_h, src_r0, src_r1, mask_h, scale_h)
                offset_c, out_c0, out_c1 = _exact_output_range(0, image_w, src_c0, src_c1, mask_w, scale_w)
                if out_r0 >= out_r1 or out_c0 >= out_c1:
                    continue
                frames_t = torch.from_numpy(chunk_frames).to(device)
                crop = masks[unique_index, frames_t, src_r0:src_r1, src_c0:src_c1]
                upsampled = F.interpolate(crop[:, None], size=((src_r1 - src_r0) * scale_h, (src_c1 - src_c0) * scale_w),
                                          mode="bilinear", align_corners=False)[:, 0]
                window = upsampled[:, out_r0 - offset_r:out_r1 - offset_r, out_c0 - offset_c:out_c1 - offset_c]
                binary, plane_numerator, plane_denominator = _chunk_statistics(window)
                numerator[unique_index] += plane_numerator.sum()
                denominator[unique_index] += plane_denominator.sum()
                track_masks[unique_index, frames_t.to(mask_device), out_r0:out_r1, out_c0:out_c1] = \
                    binary.to(mask_device)
    else:
        plane_track, plane_frame = (torch.from_numpy(a) for a in np.nonzero(present_host))
        for start in range(0, plane_track.numel(), planes_per_chunk):
            chunk_track = plane_track[start:start + planes_per_chunk].to(device)
            chunk_frame = plane_frame[start:start + planes_per_chunk].to(device)
            planes = masks[chunk_track, chunk_frame][:, None]                # (p, 1, h, w)
            planes = F.interpolate(planes, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
            planes = planes[:, :, :image_h, :image_w]
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
