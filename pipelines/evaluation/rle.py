"""Per-frame RLE masks stored once, and the pixel work the evaluator needs done in C (pycocotools).

A `FrameTable` holds every distinct compressed RLE of a file once: an online tracker's top-k output
re-emits the same track under several classes, so a results file repeats most masks many times.
Areas and boxes are computed per distinct mask; intersections only for the (prediction frame, ground
truth frame) pairs that can change a match (see `metrics.py`).

pycocotools does the RLE decoding and run merging; its Python wrappers cost ~25 us per `iou` call,
so pair intersections are batched: every pair of a batch gets its own fake mask size, which makes
pycocotools skip (IoU -1) all the cross pairs of the batch and compute only the diagonal.
"""
from __future__ import annotations

import json
import re

import numpy as np
from pycocotools import _mask

# pycocotools 2.0.11 `area()` overflows a uint8 count beyond 255 masks per call under numpy 2.
_AREA_CHUNK = 255
# Pairs per batched `iou` call: the call costs ~25 us plus ~4 ns per (cross) pair, so ~64 is optimal.
_PAIR_CHUNK = 64

# One compressed-RLE frame as json.dump writes it (any whitespace): {"size": [h, w], "counts": "..."}.
FRAME_PATTERN = re.compile(
    rb'\{\s*"size"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]\s*,\s*"counts"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"\s*\}'
)


def _unescape(counts: bytes) -> bytes:
    """JSON string body -> raw bytes (RLE strings contain a backslash, which JSON escapes)."""
    if b"\\" not in counts:
        return counts
    return json.loads(b'"' + counts + b'"').encode("ascii")


class FrameTable:
    """Distinct per-frame masks: compressed RLE counts (bytes) with their (height, width)."""

    def __init__(self) -> None:
        self.counts: list[bytes] = []
        self._heights: list[int] = []
        self._widths: list[int] = []
        self._index: dict[tuple[int, int, bytes], int] = {}
        self.areas = np.zeros(0, dtype=np.int64)
        self.heights = np.zeros(0, dtype=np.int64)
        self.widths = np.zeros(0, dtype=np.int64)
        self._boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, height: int, width: int, counts: bytes) -> int:
        key = (height, width, counts)
        index = self._index.get(key)
        if index is None:
            index = len(self.counts)
            self._index[key] = index
            self.counts.append(counts)
            self._heights.append(height)
            self._widths.append(width)
        return index

    def add_many(self, heights: list[bytes], widths: list[bytes], counts: list[bytes]) -> np.ndarray:
        """Adds frames parsed by FRAME_PATTERN (escaped JSON bodies); returns their indices (n,)."""
        n = len(counts)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        distinct = {}
        for key in dict.fromkeys(counts):
            distinct[key] = len(distinct)
        local = np.fromiter(map(distinct.__getitem__, counts), dtype=np.int64, count=n)
        frame_h = np.array(heights).astype(np.int64)
        frame_w = np.array(widths).astype(np.int64)
        # Distinct ids were numbered in order of first appearance: a running max finds those.
        first = np.flatnonzero(np.diff(np.maximum.accumulate(local), prepend=-1) > 0)
        # The same counts string under two sizes (e.g. 180x320 and 320x180) are two masks.
        odd = np.flatnonzero((frame_h != frame_h[first[local]]) | (frame_w != frame_w[first[local]]))
        keys = list(distinct)
        mapping = np.empty(len(keys), dtype=np.int64)
        for j, key in enumerate(keys):
            mapping[j] = self.add(int(frame_h[first[j]]), int(frame_w[first[j]]), _unescape(key))
        result = mapping[local]
        for i in odd:
            result[i] = self.add(int(frame_h[i]), int(frame_w[i]), _unescape(counts[i]))
        return result

    def finalize(self) -> "FrameTable":
        """Computes the area of every mask not measured yet (call after adding)."""
        done = len(self.areas)
        new = [{"size": [h, w], "counts": c} for h, w, c in
               zip(self._heights[done:], self._widths[done:], self.counts[done:])]
        parts = [self.areas]
        for start in range(0, len(new), _AREA_CHUNK):
            parts.append(_mask.area(new[start:start + _AREA_CHUNK]).astype(np.int64))
        self.areas = np.concatenate(parts)
        self.heights = np.asarray(self._heights, dtype=np.int64)
        self.widths = np.asarray(self._widths, dtype=np.int64)
        self._boxes = None
        return self

    def boxes(self, indices: np.ndarray) -> np.ndarray:
        """Boxes [x, y, w, h] (n, 4) float64 of the masks `indices` (computed once, on demand)."""
        if self._boxes is None:
            self._boxes = np.full((len(self.counts), 4), np.nan)
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.unique(indices[np.isnan(self._boxes[indices, 0])])
        if len(missing):
            rles = [{"size": [self._heights[i], self._widths[i]], "counts": self.counts[i]} for i in missing]
            self._boxes[missing] = _mask.toBbox(rles).reshape(-1, 4)
        return self._boxes[indices]


def intersections(table_a: FrameTable, ids_a: np.ndarray, table_b: FrameTable, ids_b: np.ndarray) -> np.ndarray:
    """Pixel count of mask ids_a[j] AND mask ids_b[j] for every j (same-size masks), int64 (P,)."""
    count = len(ids_a)
    out = np.zeros(count, dtype=np.int64)
    if count == 0:
        return out
    crowd = np.ones(_PAIR_CHUNK, dtype=np.uint8)
    counts_a, counts_b = table_a.counts, table_b.counts
    areas_a = table_a.areas[ids_a]
    for start in range(0, count, _PAIR_CHUNK):
        stop = min(count, start + _PAIR_CHUNK)
        # Pair j of the batch gets size [j + 1, 1]: every cross pair then has mismatched sizes.
        left = [{"size": [j + 1, 1], "counts": counts_a[i]} for j, i in enumerate(ids_a[start:stop].tolist())]
        right = [{"size": [j + 1, 1], "counts": counts_b[i]} for j, i in enumerate(ids_b[start:stop].tolist())]
        # With iscrowd=1 pycocotools returns intersection / area(left), exact in float64.
        ratio = np.diagonal(_mask.iou(left, right, crowd[: stop - start]))
        out[start:stop] = np.rint(ratio * areas_a[start:stop]).astype(np.int64)
    return out


def rle_from_segmentation(segmentation, height: int, width: int) -> tuple[int, int, bytes]:
    """A ground-truth / result frame (compressed RLE, uncompressed RLE or polygons) -> (h, w, counts)."""
    if isinstance(segmentation, list):  # polygons: one object may have several parts
        rle = _mask.merge(_mask.frPyObjects(segmentation, height, width), 0)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = _mask.frUncompressedRLE([segmentation], height, width)[0]
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        rle = segmentation
    else:
        raise ValueError(f"unsupported segmentation {str(segmentation)[:80]!r}")
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    h, w = rle["size"]
    return int(h), int(w), counts
