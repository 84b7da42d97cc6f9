"""The CPU kernel of the tracker: the detection stage's full-mask passes (:class:`MaskPasses`) on
numpy views of CPU tensors, with the same values as the torch reference path.

Why it exists: the full-mask passes (gather the candidates' masks, binarise, count pixels per band
of rows, count pair intersections) are simple elementwise work on a few MB per frame. numpy does
each single-threaded in 0.04-0.13 ms where torch takes 0.3 ms on one thread and 4-12 ms on two
threads of a loaded machine (each op opens an OpenMP parallel region whose barrier waits for a
descheduled thread; measured); and on this kind of machine writing into fresh pages costs several
times the copy itself (2.0 ms vs 0.18 ms per frame for 3 MB of masks), so the kernel reuses its
buffers. Tracker sweeps over cached network outputs run the tracker over whole splits on CPU:
``benchmarks/bench_tracker.py`` measures both paths side by side.

The one switch is :func:`mask_passes_for`; ``tests/test_tracker.py`` checks this kernel equal to
the torch path, pass by pass and over whole videos for every tracker option.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .detection import INTERSECTION_PAIRS_PER_BATCH, CandidateMasks, MaskPasses, ambiguous_logit, band_height

# Tests switch this off to run the torch path (what accelerators run) on CPU.
ENABLED = True


def mask_passes_for(pred_masks: Tensor) -> MaskPasses:
    """The full-mask passes for a tracker whose masks look like ``pred_masks``: the CPU kernel for
    CPU tensors numpy can view (not bfloat16), the torch path otherwise."""
    if ENABLED and pred_masks.device.type == "cpu" and pred_masks.dtype != torch.bfloat16:
        return CpuMaskPasses()
    return MaskPasses()


class CpuMaskPasses(MaskPasses):
    """:class:`MaskPasses` on numpy views, frame by frame so that each frame's masks are read once
    from memory and then worked on in cache, into buffers reused across clips (one instance per
    tracker)."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A reused buffer of at least ``shape`` (its contents are stale)."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(max(size, 2 * buffer.size if buffer is not None else 0), dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)

    def candidate_masks(self, pred_masks: Tensor, flat_rows: np.ndarray, offsets: np.ndarray,
                        keep_copy: bool) -> CandidateMasks:
        # The binary masks live in a reused buffer: they are read only while the clip is tracked.
        # The kept copies go to one allocation per clip (large enough for the allocator to back it
        # with huge pages).
        num_frames, num_queries = pred_masks.shape[:2]
        frames = pred_masks.detach().numpy()
        mask_shape = frames.shape[2:]
        total = int(offsets[-1])
        num_selected = np.diff(offsets)
        binary = self._buffer("binary", (total, *mask_shape), np.bool_)
        band_counts = np.empty((total, mask_shape[0] // band_height(*mask_shape)), dtype=np.int32)
        strict = self._buffer("strict", (int(num_selected.max()), *mask_shape), np.bool_)
        if keep_copy:
            copies = np.empty((total, *mask_shape), dtype=frames.dtype)
        else:
            scratch = self._buffer("logits", (int(num_selected.max()), *mask_shape), frames.dtype)
        for frame in range(num_frames):
            start, stop = int(offsets[frame]), int(offsets[frame + 1])
            out = copies[start:stop] if keep_copy else scratch[:stop - start]
            # mode="clip": numpy buffers take(out=...) in the default mode (the indices are valid).
            np.take(frames[frame], flat_rows[start:stop] - frame * num_queries, axis=0, out=out, mode="clip")
            band_counts[start:stop] = self._binarize(out, binary[start:stop], strict[:stop - start])
        return CandidateMasks(torch.from_numpy(binary), band_counts, torch.from_numpy(copies) if keep_copy else None)

    def _binarize(self, logits: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """``binarize_mask_logits`` of (n, h, w) logits into ``out`` (bool), using ``scratch``
        (bool, same shape): no allocation when nothing is ambiguous. Returns the per-band pixel
        counts of the result (computed while it is in cache)."""
        np.greater(logits, 0, out=out)
        band_counts = _band_pixel_counts(out)
        np.greater(logits, ambiguous_logit(torch.from_numpy(logits[:0]).dtype), out=scratch)
        # The strict test is a subset of the plain one: equal counts mean equal masks (almost always).
        if int(band_counts.sum(dtype=np.int64)) != np.count_nonzero(scratch):
            ambiguous = out & ~scratch
            out[ambiguous] = (torch.from_numpy(logits[ambiguous]).sigmoid() > 0.5).numpy()
            band_counts = _band_pixel_counts(out)
        return band_counts

    def band_counts(self, binary: Tensor) -> np.ndarray:
        return _band_pixel_counts(binary.numpy())

    def intersections(self, binary: Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        flat = binary.numpy().reshape(binary.shape[0], -1)
        counts = np.zeros(first.size, dtype=np.int64)
        for begin in range(0, first.size, INTERSECTION_PAIRS_PER_BATCH):
            batch = slice(begin, begin + INTERSECTION_PAIRS_PER_BATCH)
            both = np.take(flat, first[batch], axis=0) & np.take(flat, second[batch], axis=0)
            counts[batch] = both.view(np.uint8).sum(axis=1, dtype=np.int64)
        return counts


def _band_pixel_counts(binary: np.ndarray) -> np.ndarray:
    """(n, h / g) int32 number of True pixels per band of g = ``band_height(h, w)`` mask rows of a
    (n, h, w) bool array.

    When a row is a whole number of 8-byte words (w % 8 == 0, C-contiguous), a band's words are
    summed as uint64: byte lane k of the sum counts the pixels at positions = k mod 8 (at most
    g * w / 8 < 256 each, so no lane carries into the next), and the band count is the sum of the
    8 lanes, added in-register: adjacent byte lanes into four 16-bit lanes (each < 2^9), then those
    four by one multiplication whose top 16 bits hold their sum (< 2^11, no carry out). Bands of 4
    rows instead of single rows cost 2.5x less (measured) and bound mask intersections almost as
    tightly (see clip_mask_nms_keep). Otherwise int32 sums of the bytes (a bool sum, or a uint8
    sum to int64, first converts the whole array; measured several times slower)."""
    num, height, width = binary.shape
    rows = band_height(height, width)
    if width % 8 or rows * width >= 2048 or not binary.flags.c_contiguous:
        counts = binary.view(np.uint8).sum(axis=2, dtype=np.int32)
        return counts.reshape(num, height // rows, rows).sum(axis=2, dtype=np.int32) if rows > 1 else counts
    lane_sums = binary.view(np.uint64).reshape(num, height // rows, rows * width // 8).sum(axis=2, dtype=np.uint64)
    low_bytes = np.uint64(0x00FF00FF00FF00FF)
    pairs = (lane_sums & low_bytes) + ((lane_sums >> np.uint64(8)) & low_bytes)
    return ((pairs * np.uint64(0x0001000100010001)) >> np.uint64(48)).astype(np.int32)
