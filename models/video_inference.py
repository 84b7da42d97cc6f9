"""Video-level post-processing of the tracker output: on a video held in memory, and online.

:func:`inference_video` (dense track masks) and :func:`inference_tracks` (the tracker's compact
:class:`VideoTracks`) reproduce the released ``CTVISModel.inference_video``: softmax over the
tracks' temporal logits, drop the no-object class, top-k over (track x class), masks upsampled to
the padded image tensor size (bilinear, align_corners=False), cropped to the unpadded image size,
resized to the output (height, width), binarised ``> 0``, and every score multiplied by the mask
confidence ``sum(sigmoid * mask) / (sum(mask) + 1e-6)`` computed at the output resolution.

It gives the same labels and bit-identical masks, and scores within float32 summation noise, while
doing far less work than the released per-entry loop:

* a track that appears in several top-k entries (one per class) is upsampled once and shared;
* frames where a track's mask logits have no positive pixel produce an all-False mask and add
  nothing to the confidence (bilinear weights are a convex combination), so they are skipped;
* a same-size second resize is the identity and is skipped;
* positive output pixels can only lie in a window derived from the low-resolution positive rows
  and columns (through both resizes, see ``_output_window``): the threshold, the sigmoid and the
  counts run on that window only, and the result is kept as windows (:class:`MaskWindows`) rather
  than a dense (U, T, H, W) tensor of mostly zeros (built only when ``track_masks``/``masks`` is
  read).

Not done, on purpose: interpolating only a window around the object (the planes are still upsampled
whole; only the statistics use the window). It looks exact for
power-of-two scales, but the CPU kernel's rounding depends on where a pixel sits in the output
buffer, so a cropped interpolation differs from the full one in the last bit (measured), which can
flip mask pixels whose logit is ~0.

Shapes: N tracks, T frames, K classes (K+1 logits), h, w mask size, H, W output size, k top-k.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.frame_outputs import FrameOutputs
from models.tracking import SettledFrame, TrackerConfig, VideoTracker, VideoTracks


@dataclass(frozen=True)
class MaskWindows:
    """Compact video masks: every (track, frame) mask is all False except one window.

    track (P,) and frame (P,) long, box (P, 4) long [top, left, bottom, right) of each window,
    masks: P bool tensors (bottom - top, right - left). shape: the dense (U, T, H, W) it stands for.
    """

    track: np.ndarray
    frame: np.ndarray
    box: np.ndarray
    masks: tuple[Tensor, ...]
    shape: tuple[int, int, int, int]
    device: torch.device

    def dense(self) -> Tensor:
        """(U, T, H, W) bool."""
        out = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        for track, frame, (top, left, bottom, right), window in zip(
                self.track.tolist(), self.frame.tolist(), self.box.tolist(), self.masks):
            out[track, frame, top:bottom, left:right] = window
        return out


class VideoInstances:
    """Post-processed video predictions.

    scores (k,) float, labels (k,) long in [0, K), and the masks as ``track_masks`` (U, T, H, W)
    bool of the U distinct tracks among the top-k plus ``mask_index`` (k,) long into them: entries
    of the same track share one mask. ``masks`` materialises the (k, T, H, W) bool tensor.

    The post-processing builds the masks compactly (``windows``, a :class:`MaskWindows`: writing a
    dense (U, T, H, W) tensor of zeros costs more than the rest of the work at video resolutions);
    ``track_masks`` is then materialised on first access (and kept), and :meth:`frame_mask` gives
    one entry's mask at one frame without it (what a per-frame RLE encoder needs).
    ``VideoInstances(scores, labels, track_masks, mask_index, image_size)`` builds the dense form.
    """

    def __init__(self, scores: Tensor, labels: Tensor, track_masks: Tensor | None, mask_index: Tensor,
                 image_size: tuple[int, int], *, windows: MaskWindows | None = None):
        if (track_masks is None) == (windows is None):
            raise ValueError("VideoInstances needs exactly one of track_masks and windows")
        self.scores = scores
        self.labels = labels
        self.mask_index = mask_index
        self.image_size = image_size
        self.windows = windows
        self._track_masks = track_masks

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        return f"VideoInstances(entries={len(self)}, image_size={self.image_size})"

    @property
    def track_masks(self) -> Tensor:
        """(U, T, H, W) bool."""
        if self._track_masks is None:
            self._track_masks = self.windows.dense()
        return self._track_masks

    @property
    def masks(self) -> Tensor:
        """(k, T, H, W) bool."""
        return self.track_masks[self.mask_index.to(self.track_masks.device)]

    def frame_mask(self, entry: int, frame: int) -> Tensor:
        """(H, W) bool mask of top-k entry ``entry`` at ``frame``."""
        track = int(self.mask_index[entry])
        if self._track_masks is not None:
            return self._track_masks[track, frame]
        out = torch.zeros(self.image_size, dtype=torch.bool, device=self.windows.device)
        hits = np.flatnonzero((self.windows.track == track) & (self.windows.frame == frame))
        for index in hits.tolist():
            top, left, bottom, right = self.windows.box[index].tolist()
            out[top:bottom, left:right] = self.windows.masks[index]
        return out


def _output_window(first: np.ndarray, last: np.ndarray, size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Output index range [lo, hi] (inclusive, per plane) outside which a bilinear resize
    (align_corners=False) from ``size_in`` to ``size_out`` cannot produce a positive value, when
    the input is positive only inside [first, last].

    Output i reads input rows floor(s) and floor(s) + 1 with s = (i + 0.5) * size_in / size_out - 0.5
    (clamped at 0), with weights >= 0: a convex combination of values <= 0 is <= 0 in floating point
    too. So i matters only when floor(s) lies in [first - 1, last]; two extra indices each side
    absorb the rounding of s.
    """
    scale = size_in / size_out
    lo = np.ceil((first - 0.5) / scale - 0.5).astype(np.int64) - 2
    hi = np.floor((last + 1.5) / scale - 0.5).astype(np.int64) + 2
    return lo.clip(0, size_out - 1), hi.clip(0, size_out - 1)


def _host(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _positive_extent(on: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last True index along the last axis of (p, length) bool (rows with one)."""
    return on.argmax(axis=1), length - 1 - on[:, ::-1].argmax(axis=1)


@dataclass(frozen=True)
class PlaneWindows:
    """Mask logit planes (p, h, w) taken to the output size: for the q planes with a positive output
    pixel, ``index`` (q,) into the input planes, ``box`` (q, 4) [top, left, bottom, right) of the
    window holding every positive pixel, ``masks`` q bool windows, and the plane's mask confidence
    terms: ``sums`` (q,) float, sum of the sigmoid over its positive pixels, ``counts`` (q,) long."""

    index: np.ndarray
    box: np.ndarray
    masks: tuple[Tensor, ...]
    sums: Tensor
    counts: Tensor


def upsample_planes(planes: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                    output_size: tuple[int, int]) -> PlaneWindows:
    """The released per-plane post-processing of (p, h, w) mask logits: bilinear upsampling to the
    padded size, crop to the image size, bilinear resize to the output size, ``> 0``, and the
    sigmoid sum over the positive pixels; computed on the window that can hold positive pixels
    (``_output_window``). Every plane is independent of the others it is batched with."""
    padded_h, padded_w = padded_size
    image_h, image_w = image_size
    out_h, out_w = output_size
    mask_h, mask_w = planes.shape[-2:]
    resize_twice = (out_h, out_w) != (image_h, image_w)  # a same-size bilinear resize is the identity
    empty = PlaneWindows(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), (),
                         planes.new_zeros(0), torch.zeros(0, dtype=torch.long, device=planes.device))
    # Where each plane has a positive logit (rows, columns): a plane without one upsamples to
    # values <= 0 only, an all-False mask adding nothing to the confidence: skipped.
    rows_on, cols_on = _host(planes.amax(dim=2) > 0), _host(planes.amax(dim=1) > 0)
    present = np.flatnonzero(rows_on.any(axis=1))
    if present.size == 0:
        return empty
    if present.size < planes.shape[0]:
        planes = planes.index_select(0, torch.from_numpy(present).to(planes.device))
    row_first, row_last = _positive_extent(rows_on[present], mask_h)
    col_first, col_last = _positive_extent(cols_on[present], mask_w)
    # The window of the final plane that can hold positive values (through both resizes).
    top, bottom = _output_window(row_first, row_last, mask_h, padded_h)
    left, right = _output_window(col_first, col_last, mask_w, padded_w)
    bottom, right = np.minimum(bottom, image_h - 1), np.minimum(right, image_w - 1)
    # An empty window: the positive part was cropped away with the padding.
    kept = np.flatnonzero((top <= bottom) & (left <= right))
    if kept.size == 0:
        return empty
    if resize_twice:
        top, bottom = _output_window(top, bottom, image_h, out_h)
        left, right = _output_window(left, right, image_w, out_w)

    # F.interpolate computes each plane independently of the batch it is in, so regrouping the
    # released (5 entries x 5 frames) chunks into planes changes no bit. Whole planes are
    # upsampled: a cropped interpolation differs in the last bit (see the module notes).
    upsampled = F.interpolate(planes[:, None], size=(padded_h, padded_w), mode="bilinear", align_corners=False)
    upsampled = upsampled[:, :, :image_h, :image_w]
    if resize_twice:
        upsampled = F.interpolate(upsampled, size=(out_h, out_w), mode="bilinear", align_corners=False)
    boxes, masks, sums, counts = [], [], [], []
    for index in kept.tolist():
        rows = slice(int(top[index]), int(bottom[index]) + 1)
        cols = slice(int(left[index]), int(right[index]) + 1)
        window = upsampled[index, 0, rows, cols]
        on = window > 0
        # Confidence sum(sigmoid * mask) over the positive pixels; sigmoid(-inf) is exactly 0.
        sums.append(torch.where(on, window, float("-inf")).sigmoid().sum())
        counts.append(torch.count_nonzero(on))
        boxes.append((rows.start, cols.start, rows.stop, cols.stop))
        masks.append(on)
    return PlaneWindows(present[kept], np.array(boxes, dtype=np.int64).reshape(-1, 4), tuple(masks),
                        torch.stack(sums), torch.stack(counts))


def select_topk(pred_logits: Tensor, num_topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The released top-k over (track x class): softmax over the temporal logits (N, K+1), drop the
    no-object class, the k best scores. Returns (scores (k,), labels (k,), track rows (k,))."""
    num_classes = pred_logits.shape[1] - 1
    scores = F.softmax(pred_logits, dim=-1)[:, :-1]
    # The released code asks for exactly num_topk (and fails when N*K is smaller); clamp instead.
    num_entries = min(num_topk, scores.numel())
    topk_scores, topk_indices = scores.flatten().topk(num_entries, sorted=True)
    return topk_scores, topk_indices % num_classes, topk_indices // num_classes


def mask_confidence(numerator: Tensor, denominator: Tensor, dtype: torch.dtype) -> Tensor:
    """``sum(sigmoid * mask) / (sum(mask) + 1e-6)`` from float64 sums, in ``dtype`` like the
    released code (its count + 1e-6 rounds in float32)."""
    return numerator.to(dtype) / (denominator.to(dtype) + 1e-6)


@torch.no_grad()
def inference_tracks(tracks: VideoTracks, padded_size: tuple[int, int], image_size: tuple[int, int],
                     output_size: tuple[int, int], num_topk: int, planes_per_chunk: int = 8,
                     mask_device: torch.device | str | None = None) -> VideoInstances:
    """Top-k video instances from the tracker output (the released ``inference_video``), reading
    the tracks' compact per-frame masks directly (no dense (N, T, h, w) tensor). See
    :func:`inference_video` for the arguments; ``planes_per_chunk`` planes are upsampled per call
    (small chunks keep each upsampled plane in cache for the statistics that read it next)."""
    padded_size = tuple(int(v) for v in padded_size)
    image_size = tuple(int(v) for v in image_size)
    out_h, out_w = (int(v) for v in output_size)
    if image_size[0] > padded_size[0] or image_size[1] > padded_size[1]:
        raise ValueError(f"inference_video: image_size {image_size} exceeds padded_size {padded_size}")
    if planes_per_chunk < 1:
        raise ValueError(f"inference_video: planes_per_chunk must be >= 1, got {planes_per_chunk}")
    pred_logits = tracks.pred_logits
    num_tracks, num_frames = len(tracks), tracks.num_frames
    device = pred_logits.device
    mask_device = torch.device(mask_device) if mask_device is not None else device
    if num_tracks == 0:
        return VideoInstances(pred_logits.new_zeros(0), torch.zeros(0, dtype=torch.long), None,
                              torch.zeros(0, dtype=torch.long), (out_h, out_w),
                              windows=MaskWindows(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                                  np.zeros((0, 4), np.int64), (), (0, num_frames, out_h, out_w),
                                                  mask_device))

    topk_scores, labels, entry_tracks = select_topk(pred_logits, num_topk)
    # A track in several top-k entries (one per class) is upsampled once and shared.
    unique_tracks, mask_index = torch.unique(entry_tracks, return_inverse=True)
    unique_host = unique_tracks.cpu().numpy()
    num_unique = unique_host.size

    window_track, window_frame, window_box, window_masks = [], [], [], []
    numerator = torch.zeros(num_unique, dtype=torch.float64, device=device)
    denominator = torch.zeros(num_unique, dtype=torch.float64, device=device)
    # Every recorded (track, frame) plane of the selected tracks, track-major.
    plane_track, plane_frame = np.nonzero(tracks.recorded[unique_host])
    for start in range(0, plane_track.size, planes_per_chunk):
        chunk_track = plane_track[start:start + planes_per_chunk]
        chunk_frame = plane_frame[start:start + planes_per_chunk]
        planes = tracks.planes(unique_host[chunk_track], chunk_frame)                    # (p, h, w)
        windows = upsample_planes(planes, padded_size, image_size, (out_h, out_w))
        if windows.index.size == 0:
            continue
        window_track.extend(chunk_track[windows.index].tolist())
        window_frame.extend(chunk_frame[windows.index].tolist())
        window_box.append(windows.box)
        window_masks.extend(mask.to(mask_device) for mask in windows.masks)
        chunk_tracks = torch.from_numpy(chunk_track[windows.index]).to(device)
        numerator.index_add_(0, chunk_tracks, windows.sums.double())
        denominator.index_add_(0, chunk_tracks, windows.counts.double())

    confidence = mask_confidence(numerator, denominator, topk_scores.dtype)
    windows = MaskWindows(np.array(window_track, dtype=np.int64), np.array(window_frame, dtype=np.int64),
                          np.concatenate(window_box) if window_box else np.zeros((0, 4), np.int64),
                          tuple(window_masks), (num_unique, num_frames, out_h, out_w), mask_device)
    return VideoInstances(topk_scores * confidence[mask_index], labels, None, mask_index.cpu(), (out_h, out_w),
                          windows=windows)


@torch.no_grad()
def inference_video(pred_logits: Tensor, pred_masks: Tensor, padded_size: tuple[int, int],
                    image_size: tuple[int, int], output_size: tuple[int, int], num_topk: int,
                    planes_per_chunk: int = 8, mask_device: torch.device | str | None = None,
                    ) -> VideoInstances:
    """Top-k video instances from tracker outputs (the released ``inference_video``).

    pred_logits (N, K+1) temporal logits of the tracks; pred_masks (N, T, h, w) mask logits (zero
    where a track is absent). padded_size: the (H_pad, W_pad) of the padded image tensor the
    network saw; image_size: the unpadded (H_img, W_img) inside it; output_size: the (height,
    width) to predict at. ``planes_per_chunk`` (track, frame) planes are upsampled at a time (the
    released code does TEST_INSTANCE_CHUNK_SIZE x TEST_INTERPOLATE_CHUNK_SIZE = 5 x 5); ``mask_device``
    is where the output masks are stored (default: the input's device; "cpu" for long videos).
    From the tracker, :func:`inference_tracks` on its :class:`VideoTracks` avoids the dense masks.
    """
    if pred_logits.dim() != 2 or pred_masks.dim() != 4 or pred_logits.shape[0] != pred_masks.shape[0]:
        raise ValueError(f"inference_video expects pred_logits (N, K+1) and pred_masks (N, T, h, w) with the same N; "
                         f"got {tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}")
    tracks = VideoTracks(torch.arange(pred_masks.shape[0]), pred_logits, pred_masks)
    return inference_tracks(tracks, padded_size, image_size, output_size, num_topk,
                            planes_per_chunk=planes_per_chunk, mask_device=mask_device)


def track_and_postprocess(clip_outputs: Iterable[FrameOutputs], padded_size: tuple[int, int],
                          tracker_config: TrackerConfig, image_size: tuple[int, int], output_size: tuple[int, int],
                          num_topk: int, device: torch.device | str | None = None,
                          mask_storage_device: torch.device | str | None = None,
                          planes_per_chunk: int = 8) -> tuple[VideoInstances, VideoTracks]:
    """The online tracker over a video's network outputs, clip by clip, then the top-k video
    instances (the released post-processing). What runs after the network, on live outputs
    (``CTVISModel.infer_video``) or on stored ones (a re-run from an output cache).

    clip_outputs: `FrameOutputs` of consecutive clips (logits (t, Q, K+1), masks (t, Q, h, w),
    embeds (t, Q, C)); padded_size: the (H_pad, W_pad) the network saw; image_size, output_size,
    num_topk: see :func:`inference_tracks`.
    """
    tracker = VideoTracker(tracker_config, device=device, mask_storage_device=mask_storage_device)
    for outputs in clip_outputs:
        tracker.step_clip(outputs.logits, outputs.masks, outputs.embeds)
    if tracker.num_frames == 0:
        raise ValueError("the video has no frames")
    tracks = tracker.finalize()
    instances = inference_tracks(tracks, padded_size, image_size, output_size, num_topk,
                                 planes_per_chunk=planes_per_chunk, mask_device=mask_storage_device)
    return instances, tracks


@dataclass(frozen=True)
class OnlineFrame:
    """One frame's final masks at the output size (:class:`OnlineVideoInference`), for the tracks
    that will be in the video's outputs (the noise filter has decided about every one of them).

    entries (n,) long: stable ids of the tracks (``OnlineVideoResult.entries`` refers to them);
    track_ids (n,) long; windows: their masks (``windows.index`` into ``entries``; a track whose
    mask is empty at the output size has no window); labels (n,) long and scores (n,) float: each
    track's class and score so far (softmax of its mean logits over its frames up to this one),
    what an online display shows; the video's final scores come at the end.
    """

    frame_index: int
    entries: np.ndarray
    track_ids: np.ndarray
    windows: PlaneWindows
    labels: np.ndarray
    scores: np.ndarray
    output_size: tuple[int, int]

    def dense_masks(self) -> Tensor:
        """(n, H, W) bool, row i the mask of ``entries[i]``."""
        out = torch.zeros((self.entries.size, *self.output_size), dtype=torch.bool)
        for row, (top, left, bottom, right), mask in zip(self.windows.index.tolist(), self.windows.box.tolist(),
                                                          self.windows.masks):
            out[row, top:bottom, left:right] = mask.cpu()
        return out


@dataclass(frozen=True)
class OnlineVideoResult:
    """The video's top-k instances (the released post-processing), in score order: entries (k,)
    long (the tracks, as in :class:`OnlineFrame`), track_ids (k,), labels (k,) in [0, K), scores (k,)."""

    entries: np.ndarray
    track_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    num_frames: int


class OnlineVideoInference:
    """The tracker and the released post-processing over a video of any length, in bounded memory.

    :func:`track_and_postprocess` keeps every tracked mask until the end of the video, because the
    top-k selection needs the whole video's scores. Here each frame is taken to the output size as
    soon as the tracker has settled it (:meth:`VideoTracker.take_settled_frames`, a bounded number
    of frames behind), for every track that will be in the outputs, and handed to the caller
    (:class:`OnlineFrame`: encode it, draw it, then drop it); the tracker then drops its masks.
    Only the per-track confidence sums and the tracks' per-frame logits (K+1 floats) stay. At the
    end, :meth:`finish` selects the top-k (:func:`select_topk`) as :func:`inference_tracks` does:
    the same instances, the same masks bit for bit (the same per-plane code,
    :func:`upsample_planes`) and the same scores up to the order of float64 sums.

    Per frame it upsamples the masks of all tracks, not only the top-k ones (they are not known
    before the end), so it costs more than :func:`inference_tracks` on a video held in memory.
    """

    def __init__(self, tracker_config: TrackerConfig, padded_size: tuple[int, int], image_size: tuple[int, int],
                 output_size: tuple[int, int], num_topk: int, device: torch.device | str | None = None,
                 planes_per_chunk: int = 8):
        self.padded_size = tuple(int(v) for v in padded_size)
        self.image_size = tuple(int(v) for v in image_size)
        self.output_size = tuple(int(v) for v in output_size)
        if self.image_size[0] > self.padded_size[0] or self.image_size[1] > self.padded_size[1]:
            raise ValueError(f"OnlineVideoInference: image_size {image_size} exceeds padded_size {padded_size}")
        if planes_per_chunk < 1:
            raise ValueError(f"OnlineVideoInference: planes_per_chunk must be >= 1, got {planes_per_chunk}")
        self.num_topk = num_topk
        self.planes_per_chunk = planes_per_chunk
        self.tracker = VideoTracker(tracker_config, device=device)
        # Per entry: float64 confidence sums (in frame order), and the running logit sums for display.
        self._numerator: dict[int, float] = {}
        self._denominator: dict[int, float] = {}
        self._logit_sum: dict[int, np.ndarray] = {}
        self._logit_count: dict[int, int] = {}

    @torch.no_grad()
    def step_clip(self, outputs: FrameOutputs) -> list[OnlineFrame]:
        """Track the clip's frames (logits (t, Q, K+1), masks (t, Q, h, w), embeds (t, Q, C)); returns
        the frames settled so far, oldest first (possibly none, possibly earlier clips' frames)."""
        self.tracker.step_clip(outputs.logits, outputs.masks, outputs.embeds)
        return self._settled()

    @torch.no_grad()
    def finish(self) -> tuple[list[OnlineFrame], OnlineVideoResult]:
        """End of the video: the frames not handed out yet, and the top-k instances."""
        if self.tracker.num_frames == 0:
            raise ValueError("the video has no frames")
        entries, track_ids, pred_logits = self.tracker.end_of_video()
        frames = self._settled()
        if entries.size == 0:
            empty = np.zeros(0, np.int64)
            return frames, OnlineVideoResult(empty, empty, empty, np.zeros(0, np.float32), self.tracker.num_frames)
        topk_scores, labels, rows = select_topk(pred_logits, self.num_topk)
        host_rows = rows.cpu().numpy()
        selected = entries[host_rows]
        numerator = torch.tensor([self._numerator.get(int(e), 0.0) for e in selected.tolist()], dtype=torch.float64)
        denominator = torch.tensor([self._denominator.get(int(e), 0.0) for e in selected.tolist()],
                                   dtype=torch.float64)
        scores = topk_scores.cpu() * mask_confidence(numerator, denominator, topk_scores.dtype)
        return frames, OnlineVideoResult(selected, track_ids.numpy()[host_rows], labels.cpu().numpy(),
                                         scores.numpy(), self.tracker.num_frames)

    def _settled(self) -> list[OnlineFrame]:
        return [self._output_frame(frame) for frame in self.tracker.take_settled_frames()]

    def _output_frame(self, frame: SettledFrame) -> OnlineFrame:
        parts = [upsample_planes(frame.masks[start:start + self.planes_per_chunk], self.padded_size,
                                 self.image_size, self.output_size)
                 for start in range(0, frame.entries.size, self.planes_per_chunk)]
        offsets = range(0, frame.entries.size, self.planes_per_chunk)
        windows = PlaneWindows(
            np.concatenate([part.index + offset for part, offset in zip(parts, offsets)] or [np.zeros(0, np.int64)]),
            np.concatenate([part.box for part in parts] or [np.zeros((0, 4), np.int64)]),
            tuple(mask for part in parts for mask in part.masks),
            torch.cat([part.sums for part in parts]) if parts else frame.masks.new_zeros(0),
            torch.cat([part.counts for part in parts]) if parts else torch.zeros(0, dtype=torch.long))
        # Confidence terms in frame order, float64 like inference_tracks' index_add.
        for row, total, count in zip(windows.index.tolist(), windows.sums.double().tolist(),
                                     windows.counts.tolist()):
            entry = int(frame.entries[row])
            self._numerator[entry] = self._numerator.get(entry, 0.0) + total
            self._denominator[entry] = self._denominator.get(entry, 0.0) + float(count)
        logits = frame.logits.double().cpu().numpy()
        labels = np.zeros(frame.entries.size, np.int64)
        scores = np.zeros(frame.entries.size, np.float32)
        for row, entry in enumerate(frame.entries.tolist()):
            self._logit_sum[entry] = self._logit_sum.get(entry, 0.0) + logits[row]
            self._logit_count[entry] = self._logit_count.get(entry, 0) + 1
            mean = self._logit_sum[entry] / self._logit_count[entry]
            probs = np.exp(mean - mean.max())
            probs = probs[:-1] / probs.sum()
            labels[row] = int(probs.argmax())
            scores[row] = float(probs.max())
        return OnlineFrame(frame.frame_index, frame.entries, frame.track_ids, windows, labels, scores,
                           self.output_size)
