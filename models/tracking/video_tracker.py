"""The streaming tracker of CTVIS: per-frame detections -> video-level tracks, at parity with the released
``SimpleTracker`` + ``MemoryBank`` (IDOL-style association with a memory bank of re-id embeddings).

The tracker is a streaming state object, :class:`VideoTracker`: ``step()`` consumes ONE frame,
``step_clip()`` a clip of frames (bit for bit the same as one ``step()`` per frame), and
``current_tracks()`` / ``finalize()`` return the video-level outputs for the frames seen so far.
:func:`track_video` runs it over a whole video. Shapes use fixed letters: T frames, Q queries,
K classes (K+1 logits, no-object last), C embedding channels, h, w mask size, M memory-bank
tracklets, N output tracks.

Where the work goes (and why it is fast):

* the detection stage (score sort, select threshold, mask NMS) does not depend on the tracks, so
  it runs for a clip of frames at once: only the selected detections' masks are read, binarised
  and counted per band of rows; the pairwise mask IoU is exact from the areas for pairs sharing no
  band, bounded for the rest, and an integer intersection is computed only for the few pairs the
  bound cannot settle. These full-mask passes are the one place a CPU kernel replaces the torch
  path (``cpu_kernel.mask_passes_for``);
* the bi-softmax / cosine match matrix and the memory-bank update of all matched tracklets are
  a few batched torch ops on the state's device; the bank lives in preallocated slots;
* the inherently sequential decisions (greedy NMS, greedy matching in score order) run on small
  host copies; NMS settles position i of every frame of a clip at once; greedy matching takes
  each row's first choice unless a taken column makes it look again;
* nothing grows with the video inside a step and no mask is copied twice: the tracked masks stay
  in the clip's candidate copy (or, in :func:`track_video`, in the caller's whole-video tensor)
  and :class:`VideoTracks` reads them in place (the dense (N, T, h, w) tensor is only built when
  asked for); the video bookkeeping (which track is present in which frame, noise-track deletion)
  is a few integer arrays.

Semantics follow the released code, including its quirks (documented where they matter):
``-3/-2/-1`` diagnostic codes, "keep the top detection when none passes the select threshold",
NMS IoU ``(inter + 1e-6) / (union + 1e-6)`` on ``sigmoid > 0.5`` masks, frame-weighted greedy
matching compared against the threshold after weighting, a noise-deleted track that comes back
restarting as a new output row, and the memory bank keeping tracks the noise filter dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .association import greedy_match, hungarian_match
from .config import BELOW_SELECT_THR, REMOVED_BY_NMS, TrackerConfig
from .cpu_kernel import mask_passes_for
from .detection import ClipDetections, MaskPasses, clip_mask_nms_keep, to_host
from .memory_bank import _MemoryBank


@dataclass(frozen=True)
class FrameTrackResult:
    """What one ``VideoTracker.step`` decided (host tensors, for diagnostics and streaming use).

    assigned_ids: (Q,) long, per query in input order: the track id, or -3 (score below
        ``inference_select_thr``), -2 (removed by mask NMS), -1 (kept but got no id).
    query_indices: (n,) long, the queries that got a track id this frame, in score order.
    track_ids: (n,) long, their track ids.
    live_ids: (M,) long, memory-bank tracklet ids after the frame (insertion order).
    """

    frame_index: int
    assigned_ids: Tensor
    query_indices: Tensor
    track_ids: Tensor
    live_ids: Tensor


@dataclass(frozen=True)
class SettledFrame:
    """One frame's final part of the video-level outputs (:meth:`VideoTracker.take_settled_frames`).

    entries: (n,) long, the output entry of each tracked mask (stable ids in creation order: the
    rows of the final outputs are the surviving entries in this order, see
    :meth:`VideoTracker.end_of_video`); track_ids: (n,) long; masks: (n, h, w) mask logits;
    logits: (n, K+1) the frame's logits of those tracks.
    """

    frame_index: int
    entries: np.ndarray
    track_ids: np.ndarray
    masks: Tensor
    logits: Tensor


class VideoTracks:
    """Video-level tracker output, in the order the released ``video_dict`` holds them.

    track_ids: (N,) long (host). pred_logits: (N, K+1), the temporal score (mean or max) of the
    logits over the frames where the track is present. pred_masks: (N, T, h, w) mask logits, zero
    in frames where the track is absent.

    The tracker builds it in a compact form, without the dense (N, T, h, w) tensor (435 MB for 42
    tracks x 100 frames of 120x216 masks, most of it zeros): ``frame_masks``, one (n_t, h, w)
    tensor per frame with the masks tracked in that frame, and ``mask_rows`` (N, T) long (host),
    the row of each track in its frame's tensor or -1 where it is absent. ``pred_masks`` is then
    materialised on first access (and kept); the post-processing (:func:`inference_tracks`) reads
    the compact form directly. ``VideoTracks(track_ids, pred_logits, pred_masks)`` builds the
    dense form.
    """

    def __init__(self, track_ids: Tensor, pred_logits: Tensor, pred_masks: Tensor | None = None, *,
                 frame_masks: tuple[Tensor, ...] | None = None, mask_rows: Tensor | None = None):
        if (pred_masks is None) == (frame_masks is None or mask_rows is None):
            raise ValueError("VideoTracks needs either pred_masks (N, T, h, w) or both frame_masks and mask_rows")
        if pred_masks is not None and pred_masks.dim() != 4:
            raise ValueError(f"VideoTracks: pred_masks must be (N, T, h, w), got {tuple(pred_masks.shape)}")
        if mask_rows is not None and (mask_rows.dim() != 2 or mask_rows.shape[1] != len(frame_masks)
                                      or mask_rows.shape[0] != track_ids.shape[0]):
            raise ValueError(f"VideoTracks: mask_rows must be (N={track_ids.shape[0]}, T={len(frame_masks)}), "
                             f"got {tuple(mask_rows.shape)}")
        self.track_ids = track_ids
        self.pred_logits = pred_logits
        self._pred_masks = pred_masks
        self.frame_masks = tuple(frame_masks) if frame_masks is not None else None
        self.mask_rows = mask_rows.cpu() if mask_rows is not None else None

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])

    def __repr__(self) -> str:
        return (f"VideoTracks(tracks={len(self)}, frames={self.num_frames}, mask_size={self.mask_size}, "
                f"{'dense' if self.frame_masks is None else 'compact'})")

    @property
    def num_frames(self) -> int:
        return int(self._pred_masks.shape[1]) if self.frame_masks is None else len(self.frame_masks)

    @property
    def mask_size(self) -> tuple[int, int]:
        source = self._pred_masks if self.frame_masks is None else self.frame_masks[0]
        return int(source.shape[-2]), int(source.shape[-1])

    @property
    def recorded(self) -> np.ndarray:
        """(N, T) bool: where a track has a mask (every frame for the dense form)."""
        if self.mask_rows is None:
            return np.ones(self._pred_masks.shape[:2], dtype=bool)
        return self.mask_rows.numpy() >= 0

    def planes(self, tracks: np.ndarray, frames: np.ndarray) -> Tensor:
        """(p, h, w) mask logits of the given (track row, frame) pairs, which must be recorded."""
        if self.frame_masks is None:
            device = self._pred_masks.device
            return self._pred_masks[torch.from_numpy(tracks).to(device), torch.from_numpy(frames).to(device)]
        rows = self.mask_rows.numpy()[tracks, frames]
        if (rows < 0).any():
            raise ValueError("VideoTracks.planes: a requested track is absent in that frame")
        if rows.size == 0:
            height, width = self.mask_size
            return self.frame_masks[0].new_zeros(0, height, width)
        # Each plane is one row of its frame's tensor; the frames differ, so one index per plane.
        return torch.stack([self.frame_masks[frame][row] for frame, row in zip(frames.tolist(), rows.tolist())])

    @property
    def pred_masks(self) -> Tensor:
        """(N, T, h, w) mask logits, zero where a track is absent (materialised once)."""
        if self._pred_masks is None:
            height, width = self.mask_size
            first = self.frame_masks[0]
            dense = first.new_zeros(len(self), self.num_frames, height, width)
            rows = self.mask_rows.numpy()
            # One copy per frame of the tracks present in it (not per track and frame).
            for frame, masks in enumerate(self.frame_masks):
                present = np.flatnonzero(rows[:, frame] >= 0)
                if present.size:
                    source_rows = torch.from_numpy(rows[present, frame]).to(masks.device)
                    dense[torch.from_numpy(present).to(dense.device), frame] = masks.index_select(0, source_rows)
            self._pred_masks = dense
        return self._pred_masks




class VideoTracker:
    """Streaming online tracker for one video.

    >>> tracker = VideoTracker(TrackerConfig())
    >>> for frame in frames:                      # frame outputs of the network, one frame at a time
    ...     result = tracker.step(frame["pred_logits"], frame["pred_masks"], frame["pred_embeds"])
    >>> tracks = tracker.finalize()

    ``device``: where the tracker state lives (default: the device of the first frame);
    ``mask_storage_device``: where per-frame masks are kept until the end of the video (default
    the same; "cpu" bounds accelerator memory on long videos, like the released TO_CPU_FRAMES).
    ``copy_masks``: True (default) keeps a copy of the candidates' masks (about the tracked ones),
    so the caller may reuse or free its frame tensors; False keeps references to the frames' own
    (Q, h, w) mask tensors instead, as the released code does (no copy; for callers that hold the
    whole video anyway, like :func:`track_video`).

    :meth:`step_clip` takes several frames at once (the same results as one :meth:`step` per
    frame, with less overhead). Per frame the cost does not depend on the video length: the masks
    are kept per frame (never re-stacked), the memory bank lives in preallocated slots, and the
    video bookkeeping is a few integer arrays.
    """

    # Frames per detection batch in step_clip (bounds its buffers: ~12 MB for 16 frames of 30
    # candidates at 120x216, which stay in a server CPU's last-level cache).
    detection_frames = 16

    def __init__(self, config: TrackerConfig, device: torch.device | str | None = None,
                 mask_storage_device: torch.device | str | None = None, copy_masks: bool = True):
        self.config = config
        self.copy_masks = copy_masks
        # The detection stage's full-mask passes, chosen for the first clip's device and dtype.
        self._mask_passes: MaskPasses | None = None
        self.device = torch.device(device) if device is not None else None
        self.mask_storage_device = torch.device(mask_storage_device) if mask_storage_device is not None else None
        self._memory: _MemoryBank | None = None
        self._next_id = 0
        self._num_frames = 0
        self._finalized = False
        self._mask_shape: tuple[int, int] | None = None
        self._num_logits: int | None = None  # K+1, from the first frame
        self._mask_dtype: torch.dtype | None = None
        # Tracks recorded per frame (ids in score order) with their logits and masks.
        self._frame_ids: list[np.ndarray] = []
        self._frame_logits: list[Tensor] = []
        # Per frame, a tensor holding the tracked masks and the row of each tracked id in it.
        self._frame_masks: list[Tensor] = []
        self._frame_mask_rows: list[np.ndarray] = []
        # Per frame, the entry of each tracked id (see below), and how many frames have been handed
        # out by take_settled_frames (their masks are released then).
        self._frame_entries: list[np.ndarray] = []
        self._num_settled = 0
        # Rows of the released video_dict ("entries"), in creation order. A track deleted as noise
        # that shows up again starts a fresh entry at that frame.
        # Capacity-doubling arrays; the first _num_entries rows are used (see _record_entries).
        self._num_entries = 0
        self._entry_track = np.zeros(0, dtype=np.int64)
        self._entry_start = np.zeros(0, dtype=np.int64)
        self._entry_count = np.zeros(0, dtype=np.int64)
        self._entry_last = np.zeros(0, dtype=np.int64)
        self._entry_alive = np.zeros(0, dtype=bool)
        self._entry_of_track = np.full(0, -1, dtype=np.int64)  # track id -> live entry or -1
        self._young_entries = np.zeros(0, dtype=np.int64)      # alive, seen < suppress_frame_num times

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def live_ids(self) -> Tensor:
        """(M,) ids of the tracklets currently in the memory bank, in insertion order."""
        # ``ids`` is a fresh array (a gather): the tensor shares nothing with the bank.
        ids = self._memory.ids if self._memory is not None else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(ids)

    def _check_clip(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> None:
        num_frames = pred_logits.shape[0] if pred_logits.dim() == 3 else 1
        first = self._num_frames
        where = f"frame {first}" if num_frames == 1 else f"frames {first}-{first + num_frames - 1}"
        # K, the number of classes, comes from the first frame's logits (K+1 with no-object).
        expected = "K+1" if self._num_logits is None else f"K+1={self._num_logits}"
        if pred_logits.dim() != 3 or pred_logits.shape[2] < 2 or \
                (self._num_logits is not None and pred_logits.shape[2] != self._num_logits):
            raise ValueError(f"{where}: pred_logits must be (Q, {expected}) per frame, "
                             f"got {tuple(pred_logits.shape[1:])}")
        num_queries = pred_logits.shape[1]
        if num_frames == 0:
            raise ValueError(f"frame {first}: an empty clip (no frames)")
        if num_queries == 0:
            raise ValueError(f"{where}: no queries")
        if pred_masks.dim() != 4 or pred_masks.shape[:2] != (num_frames, num_queries):
            raise ValueError(f"{where}: pred_masks must be (Q={num_queries}, h, w) per frame, "
                             f"got {tuple(pred_masks.shape[1:])}")
        if pred_embeds.dim() != 3 or pred_embeds.shape[:2] != (num_frames, num_queries):
            raise ValueError(f"{where}: pred_embeds must be (Q={num_queries}, C) per frame, "
                             f"got {tuple(pred_embeds.shape[1:])}")
        if self._mask_dtype is not None and pred_masks.dtype != self._mask_dtype:
            raise ValueError(f"{where}: mask dtype {pred_masks.dtype} differs from the first frame's {self._mask_dtype}")
        if self._mask_shape is not None and tuple(pred_masks.shape[2:]) != self._mask_shape:
            raise ValueError(f"{where}: mask size {tuple(pred_masks.shape[2:])} differs from the "
                             f"first frame's {self._mask_shape}")
        if self._memory is not None and pred_embeds.shape[2] != self._memory.embed_dim:
            raise ValueError(f"{where}: embedding size {pred_embeds.shape[2]} differs from the first frame's "
                             f"{self._memory.embed_dim}")
        self._num_logits = pred_logits.shape[2]

    @torch.no_grad()
    def step(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> FrameTrackResult:
        """Track one frame. pred_logits (Q, K+1), pred_masks (Q, h, w) logits, pred_embeds (Q, C)."""
        if pred_logits.dim() != 2 or pred_masks.dim() != 3 or pred_embeds.dim() != 2:
            raise ValueError(f"frame {self._num_frames}: step() takes pred_logits (Q, K+1), pred_masks (Q, h, w) "
                             f"and pred_embeds (Q, C); got {tuple(pred_logits.shape)}, {tuple(pred_masks.shape)}, "
                             f"{tuple(pred_embeds.shape)} (step_clip() takes several frames)")
        return self.step_clip(pred_logits[None], pred_masks[None], pred_embeds[None])[0]

    @torch.no_grad()
    def step_clip(self, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor) -> list[FrameTrackResult]:
        """Track the next T frames: pred_logits (T, Q, K+1), pred_masks (T, Q, h, w) logits,
        pred_embeds (T, Q, C). The same as T calls of :meth:`step`, bit for bit: the detection
        stage (score sort, select threshold, mask NMS) does not depend on the tracks, so it runs
        for the T frames at once; the association then goes frame by frame."""
        if self._finalized:
            raise RuntimeError("VideoTracker.step() after finalize(); start a new VideoTracker per video")
        self._check_clip(pred_logits, pred_masks, pred_embeds)
        if self.device is None:
            self.device = pred_logits.device
        if self.mask_storage_device is None:
            self.mask_storage_device = self.device
        if not self.copy_masks and self.mask_storage_device != self.device:
            raise ValueError("VideoTracker: copy_masks=False keeps the frames' own mask tensors; it cannot "
                             f"also keep them on mask_storage_device={self.mask_storage_device}")
        pred_logits = pred_logits.to(self.device)
        pred_masks = pred_masks.to(self.device)
        pred_embeds = pred_embeds.to(self.device)
        if self._memory is None:
            self._memory = _MemoryBank(self.config, pred_embeds.shape[2], pred_embeds.dtype, self.device)
            self._mask_shape = tuple(pred_masks.shape[2:])
            self._mask_dtype = pred_masks.dtype
            self._mask_passes = mask_passes_for(pred_masks)
        # Softmax is computed row by row: the (T, Q, K+1) call gives each frame's values bit for bit.
        probs = pred_logits.softmax(dim=-1)
        num_frames = pred_logits.shape[0]
        results: list[FrameTrackResult] = []
        # The detection stage runs over up to detection_frames frames at a time (bounds its buffers).
        for start in range(0, num_frames, self.detection_frames):
            batch = slice(start, min(start + self.detection_frames, num_frames))
            detections = self._detect(probs[batch], pred_masks[batch], pred_logits[batch], pred_embeds[batch])
            first_stored = len(self._frame_masks)
            for frame in range(batch.start, batch.stop):
                results.append(self._associate(detections, frame - start, pred_masks[frame]))
            self._store_clip_masks(detections, first_stored)
        return results

    def _detect(self, probs: Tensor, pred_masks: Tensor, pred_logits: Tensor, pred_embeds: Tensor) -> ClipDetections:
        """Steps 1-2 of the released tracker for T frames at once: sort each frame's queries by their
        best class score, keep those above the select threshold (a prefix of the sorted order) or the
        top one when none passes, and run mask NMS over the kept ones (their masks only).
        probs (T, Q, K+1) softmax of the logits, pred_masks (T, Q, h, w), pred_logits (T, Q, K+1),
        pred_embeds (T, Q, C). Reads no tracking state."""
        config = self.config
        num_frames, num_queries = probs.shape[:2]
        best_scores = probs[:, :, :-1].max(dim=2).values                                       # (T, Q)
        sorted_scores, order = torch.sort(best_scores, dim=1, descending=True)
        order = to_host(order)
        num_selected = to_host((sorted_scores > config.inference_select_thr).sum(dim=1)).clip(min=1)   # (T,)
        can_start = to_host(sorted_scores > config.init_score_thr)                               # (T, Q)
        selected = np.arange(num_queries)[None, :] < num_selected[:, None]                      # (T, Q)
        offsets = np.concatenate([[0], np.cumsum(num_selected)])
        flat_rows = (np.arange(num_frames)[:, None] * num_queries + order)[selected]            # (S,) frame-major
        candidates = self._mask_passes.candidate_masks(pred_masks, flat_rows, offsets, self.copy_masks)
        keep = clip_mask_nms_keep(candidates.binary, offsets, config.mask_nms_thr, candidates.band_counts,
                                  self._mask_passes)
        # The survivors' logits and embeddings, in one gather each for the clip.
        kept_rows = torch.from_numpy(flat_rows[keep]).to(pred_logits.device)
        kept_offsets = np.concatenate([[0], np.cumsum(np.add.reduceat(keep, offsets[:-1]))])
        return ClipDetections(offsets=offsets, queries=order[selected], can_start=can_start[selected],
                              flat_rows=flat_rows, keep=keep, masks=candidates.logits,
                              best_scores=best_scores.reshape(-1), kept_offsets=kept_offsets,
                              kept_logits=pred_logits.reshape(num_frames * num_queries, -1).index_select(0, kept_rows),
                              kept_embeds=pred_embeds.reshape(num_frames * num_queries, -1).index_select(0, kept_rows))

    def _associate(self, detections: ClipDetections, frame: int, pred_masks: Tensor) -> FrameTrackResult:
        """Steps 3-4 of the released tracker for one frame of a clip: match the kept detections with
        the memory bank, start new tracklets, update the bank and the video bookkeeping."""
        config = self.config
        frame_index = self._num_frames
        start, stop = int(detections.offsets[frame]), int(detections.offsets[frame + 1])
        kept_pos = np.flatnonzero(detections.keep[start:stop])
        selected_queries = detections.queries[start:stop]
        kept_queries = selected_queries[kept_pos]
        can_start = detections.can_start[start:stop][kept_pos]
        kept_start, kept_stop = int(detections.kept_offsets[frame]), int(detections.kept_offsets[frame + 1])
        kept_embeds = detections.kept_embeds[kept_start:kept_stop]

        track_ids = np.full(kept_pos.size, -1, dtype=np.int64)
        if self._next_id > 0 and len(self._memory) > 0:
            matched = self._match(kept_embeds)
            has_match = matched >= 0
            track_ids[has_match] = self._memory.ids[matched[has_match]]
        # A never-started tracker only initialises; afterwards unmatched confident detections start
        # new tracklets. (The released code crashes when every tracklet has died; here the empty
        # bank simply matches nothing.)
        new = (track_ids == -1) & can_start
        num_new = int(np.count_nonzero(new))
        track_ids[new] = np.arange(self._next_id, self._next_id + num_new)
        self._next_id += num_new

        has_id = track_ids >= 0
        ids = track_ids[has_id]
        tracked_pos = kept_pos[has_id]
        tracked_queries = kept_queries[has_id]
        device = kept_embeds.device
        tracked = torch.from_numpy(np.flatnonzero(has_id)).to(device)   # among the frame's kept detections
        bank_scores = None
        if config.embed_type == "temporally_weighted":
            rows = torch.from_numpy(detections.flat_rows[start + tracked_pos]).to(device)
            bank_scores = detections.best_scores.index_select(0, rows)
        tracked_embeds = kept_embeds.index_select(0, tracked)
        tracked_logits = detections.kept_logits[kept_start:kept_stop].index_select(0, tracked)
        self._memory.update(ids, bank_scores, tracked_embeds, frame_index)
        self._memory.drop_dead(frame_index)

        # Video bookkeeping: only the tracked queries' logits and masks are kept. The masks stay
        # where they are: rows of the clip's candidate copy (see _store_clip_masks) or of the
        # caller's frame tensor.
        self._frame_ids.append(ids)
        self._frame_logits.append(tracked_logits)
        if detections.masks is not None:
            self._frame_masks.append(detections.masks[start:stop])
            self._frame_mask_rows.append(tracked_pos)
        else:
            self._frame_masks.append(pred_masks)
            self._frame_mask_rows.append(tracked_queries)
        self._frame_entries.append(self._record_entries(ids, frame_index))
        self._num_frames += 1

        assigned = np.full(pred_masks.shape[0], BELOW_SELECT_THR, dtype=np.int64)
        assigned[selected_queries] = REMOVED_BY_NMS
        assigned[kept_queries] = track_ids
        return FrameTrackResult(
            frame_index=frame_index,
            assigned_ids=torch.from_numpy(assigned),
            query_indices=torch.from_numpy(tracked_queries),
            track_ids=torch.from_numpy(ids.copy()),
            live_ids=self.live_ids(),
        )

    def _store_clip_masks(self, detections: ClipDetections, first_stored: int) -> None:
        """Keep the clip's tracked masks until the end of the video.

        The frames' entries are views of the clip's candidate tensor (already a copy of the
        network's output). When fewer than half of the candidates got a track, the tracked rows are
        copied out instead, so a video never holds more than twice the tracked masks; masks kept on
        another device (``mask_storage_device``) are moved there once per clip. Without copies
        (``copy_masks=False``) the frames' own tensors are kept as they are."""
        candidates = detections.masks
        if candidates is None:
            return
        rows = self._frame_mask_rows[first_stored:]
        num_tracked = sum(frame_rows.size for frame_rows in rows)
        compact = 2 * num_tracked < candidates.shape[0]
        if not compact and candidates.device == self.mask_storage_device:
            return
        if compact:
            flat = np.concatenate([detections.offsets[frame] + frame_rows for frame, frame_rows in enumerate(rows)])
            stored = candidates.index_select(0, torch.from_numpy(flat).to(candidates.device)).to(self.mask_storage_device)
            offsets = np.concatenate([[0], np.cumsum([frame_rows.size for frame_rows in rows])])
            for frame, frame_rows in enumerate(rows):
                self._frame_masks[first_stored + frame] = stored[int(offsets[frame]):int(offsets[frame + 1])]
                self._frame_mask_rows[first_stored + frame] = np.arange(frame_rows.size)
        else:
            stored = candidates.to(self.mask_storage_device)
            for frame in range(len(rows)):
                start, stop = int(detections.offsets[frame]), int(detections.offsets[frame + 1])
                self._frame_masks[first_stored + frame] = stored[start:stop]

    def _match(self, embeds: Tensor) -> np.ndarray:
        """Column of the memory bank matched by each detection (score order), or -1."""
        config = self.config
        memory_embeds = self._memory.matching_embeds()
        if config.match_metric == "bisoftmax":
            similarity = torch.mm(embeds, memory_embeds.t())
            match_scores = (similarity.softmax(dim=1) + similarity.softmax(dim=0)) / 2
        else:
            match_scores = torch.mm(F.normalize(embeds, p=2, dim=1), F.normalize(memory_embeds, p=2, dim=1).t())
        return self._assign(to_host(match_scores.float()))

    def _assign(self, match_scores: np.ndarray) -> np.ndarray:
        config = self.config
        if config.match_type == "greedy":
            return greedy_match(match_scores, self._memory.live_exist_frames(), config.match_score_thr,
                                config.frame_weight)
        return hungarian_match(match_scores, config.match_score_thr)

    def _record_entries(self, ids: np.ndarray, frame_index: int) -> np.ndarray:
        """Update the released ``video_dict`` bookkeeping and drop noise entries; returns the entry of
        each id in this frame.

        Entries live in capacity-doubling arrays (the first ``_num_entries`` rows are used). Only an
        entry seen fewer than ``suppress_frame_num`` times can be dropped as noise, so the noise test
        looks at those "young" entries alone, not at every entry of the video."""
        config = self.config
        if self._entry_of_track.size < self._next_id:
            grown = np.full(max(self._next_id, 2 * self._entry_of_track.size), -1, dtype=np.int64)
            grown[: self._entry_of_track.size] = self._entry_of_track
            self._entry_of_track = grown
        entries = self._entry_of_track[ids]
        new = entries < 0
        num_new = int(np.count_nonzero(new))
        if num_new:
            first = self._num_entries
            if first + num_new > self._entry_track.size:
                capacity = max(first + num_new, 2 * self._entry_track.size, 64)
                for name in ("_entry_track", "_entry_start", "_entry_count", "_entry_last", "_entry_alive"):
                    old = getattr(self, name)
                    grown = np.zeros(capacity, dtype=old.dtype)
                    grown[:first] = old[:first]
                    setattr(self, name, grown)
            created = np.arange(first, first + num_new)
            entries[new] = created
            self._entry_of_track[ids[new]] = created
            self._entry_track[created] = ids[new]
            self._entry_start[created] = frame_index
            self._entry_count[created] = 0
            self._entry_alive[created] = True
            self._num_entries = first + num_new
            self._young_entries = np.concatenate([self._young_entries, created])
        self._entry_count[entries] += 1
        self._entry_last[entries] = frame_index
        young = self._young_entries
        young = young[self._entry_alive[young] & (self._entry_count[young] < config.suppress_frame_num)]
        if frame_index > config.noise_frame_num and young.size:
            # Trailing empty frames = frame_index - last frame present.
            noise = young[frame_index - self._entry_last[young] >= config.none_frame_num]
            if noise.size:
                self._entry_alive[noise] = False
                self._entry_of_track[self._entry_track[noise]] = -1
                young = young[self._entry_alive[young]]
        self._young_entries = young
        return entries

    def _output_records(self) -> tuple[np.ndarray, Tensor, np.ndarray, np.ndarray, np.ndarray, Tensor]:
        """The video-level rows for the frames seen so far: (surviving entries (N,) in creation order,
        their track ids (N,), and for every record that counts, ordered by (row, frame): its row, its
        frame, its index among all records; pred_logits (N, K+1))."""
        num_frames = self._num_frames
        live_entries = np.flatnonzero(self._entry_alive[: self._num_entries])
        num_tracks = live_entries.size
        track_ids = self._entry_track[live_entries]
        row_of_entry = np.full(self._num_entries, -1, dtype=np.int64)
        row_of_entry[live_entries] = np.arange(num_tracks)

        record_ids = np.concatenate(self._frame_ids)
        record_frames = np.repeat(np.arange(num_frames), [ids.size for ids in self._frame_ids])
        record_entry = self._entry_of_track[record_ids] if record_ids.size else record_ids
        record_row = np.where(record_entry >= 0, row_of_entry[record_entry.clip(min=0)], -1)
        # A record belongs to its track's live entry only from the entry's start frame on.
        record_row = np.where((record_row >= 0) & (record_frames >= self._entry_start[record_entry.clip(min=0)]),
                              record_row, -1)
        used = np.flatnonzero(record_row >= 0)
        # Order the used records by (row, frame) so each row's frames are contiguous and in time order.
        used = used[np.lexsort((record_frames[used], record_row[used]))]
        rows, frames = record_row[used], record_frames[used]

        all_logits = torch.cat(self._frame_logits)
        logits = all_logits.index_select(0, torch.from_numpy(used).to(all_logits.device))
        counts = np.bincount(rows, minlength=num_tracks)
        if num_tracks == 0:
            pred_logits = all_logits.new_zeros(0, all_logits.shape[1])
        elif self.config.temporal_score_type == "mean":
            # One reduction per track over its own frames: this is the released torch.stack(..).mean(0)
            # bit for bit (a padded or scattered sum reduces in a different order).
            pred_logits = torch.stack([segment.mean(0) for segment in torch.split(logits, counts.tolist())])
        else:
            padded = all_logits.new_full((num_tracks, num_frames, all_logits.shape[1]), float("-inf"))
            padded[torch.from_numpy(rows).to(logits.device), torch.from_numpy(frames).to(logits.device)] = logits
            pred_logits = padded.max(dim=1).values
        return live_entries, torch.from_numpy(track_ids.copy()), rows, frames, used, pred_logits

    @torch.no_grad()
    def current_tracks(self) -> VideoTracks:
        """The video-level outputs for the frames seen so far (see :class:`VideoTracks`)."""
        if self._num_frames == 0:
            raise RuntimeError("VideoTracker.current_tracks(): no frame has been tracked yet")
        if self._num_settled:
            raise RuntimeError("VideoTracker.current_tracks(): the masks of settled frames were handed out "
                               "(take_settled_frames); use end_of_video() for the scores")
        live_entries, track_ids, rows, frames, used, pred_logits = self._output_records()
        # Where each used record's mask sits in its frame's mask tensor.
        record_mask_rows = np.concatenate(self._frame_mask_rows)
        mask_rows = np.full((live_entries.size, self._num_frames), -1, dtype=np.int64)
        mask_rows[rows, frames] = record_mask_rows[used]
        # The per-frame mask tensors are never modified after their frame: sharing them is safe.
        return VideoTracks(track_ids, pred_logits, frame_masks=tuple(self._frame_masks),
                           mask_rows=torch.from_numpy(mask_rows))

    # -- streaming outputs ---------------------------------------------------------------------
    # A frame's part of the outputs can change later only through the noise filter, which drops
    # "young" entries (seen fewer than suppress_frame_num times) with all their records. An entry
    # seen that often is never dropped, and a dropped one never comes back (its track starts a new
    # entry), so a frame is settled once none of its records belongs to a young live entry. A young
    # entry is decided within about noise_frame_num + suppress_frame_num * none_frame_num frames, so
    # a streaming caller holds a bounded number of unsettled frames, whatever the video's length.

    @torch.no_grad()
    def take_settled_frames(self) -> list[SettledFrame]:
        """The frames (oldest first, each once) whose part of the video-level outputs no later frame
        can change: the masks and logits of the records that will be in the final rows. Their masks
        are released from the tracker. After :meth:`end_of_video`, every remaining frame."""
        settled = []
        suppress = self.config.suppress_frame_num
        while self._num_settled < self._num_frames:
            frame = self._num_settled
            entries = self._frame_entries[frame]
            alive = self._entry_alive[entries]
            if not self._finalized and bool(np.any(alive & (self._entry_count[entries] < suppress))):
                break
            keep = np.flatnonzero(alive)
            masks = self._frame_masks[frame]
            rows = torch.from_numpy(self._frame_mask_rows[frame][keep]).to(masks.device)
            logits = self._frame_logits[frame]
            settled.append(SettledFrame(frame, entries[keep].copy(), self._frame_ids[frame][keep].copy(),
                                        masks.index_select(0, rows),
                                        logits.index_select(0, torch.from_numpy(keep).to(logits.device))))
            self._frame_masks[frame] = None  # released (a clip's mask tensor goes with its last frame)
            self._num_settled += 1
        return settled

    @torch.no_grad()
    def end_of_video(self) -> tuple[np.ndarray, Tensor, Tensor]:
        """End a streamed video: (surviving entries (N,) in row order, their track ids (N,), the
        temporal pred_logits (N, K+1)), the same rows and scores as :meth:`finalize`; the remaining
        frames are then settled (:meth:`take_settled_frames`)."""
        if self._num_frames == 0:
            raise RuntimeError("VideoTracker.end_of_video(): no frame has been tracked yet")
        self._finalized = True
        live_entries, track_ids, _, _, _, pred_logits = self._output_records()
        return live_entries, track_ids, pred_logits

    def finalize(self) -> VideoTracks:
        """End of the video: the final outputs; the tracker accepts no more frames. (A streaming
        caller uses :meth:`take_settled_frames` and :meth:`end_of_video` instead.)"""
        tracks = self.current_tracks()
        self._finalized = True
        return tracks


def track_video(config: TrackerConfig, pred_logits: Tensor, pred_masks: Tensor, pred_embeds: Tensor,
                device: torch.device | str | None = None,
                mask_storage_device: torch.device | str | None = None, frames_per_step: int = 16,
                ) -> tuple[VideoTracks, list[FrameTrackResult]]:
    """Whole-video tracking on the streaming tracker.

    pred_logits (T, Q, K+1), pred_masks (T, Q, h, w), pred_embeds (T, Q, C).
    ``frames_per_step`` frames go through :meth:`VideoTracker.step_clip` at a time (bounds the
    detection stage's temporary copies; the result does not depend on it).
    Returns the video tracks and the per-frame results.
    """
    if frames_per_step < 1:
        raise ValueError(f"track_video: frames_per_step must be >= 1, got {frames_per_step}")
    if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_embeds.dim() != 3:
        raise ValueError("track_video expects pred_logits (T,Q,K+1), pred_masks (T,Q,h,w), pred_embeds (T,Q,C); "
                         f"got {tuple(pred_logits.shape)}, {tuple(pred_masks.shape)}, {tuple(pred_embeds.shape)}")
    if not (pred_logits.shape[0] == pred_masks.shape[0] == pred_embeds.shape[0]):
        raise ValueError("track_video: pred_logits, pred_masks and pred_embeds disagree on T: "
                         f"{pred_logits.shape[0]}, {pred_masks.shape[0]}, {pred_embeds.shape[0]}")
    # The whole video is in memory already: keep references to its frames rather than copies, unless
    # the masks are to be moved (to another device for tracking, or for storage).
    same_device = device is None or torch.device(device) == pred_masks.device
    tracker = VideoTracker(config, device=device, mask_storage_device=mask_storage_device,
                           copy_masks=not (same_device and mask_storage_device is None))
    results = []
    for start in range(0, pred_logits.shape[0], frames_per_step):
        clip = slice(start, start + frames_per_step)
        results.extend(tracker.step_clip(pred_logits[clip], pred_masks[clip], pred_embeds[clip]))
    return tracker.finalize(), results
