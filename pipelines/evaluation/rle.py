"""Per-frame RLE masks stored once, and the pixel work the evaluator needs done in C (pycocotools).

A `FrameTable` holds every distinct compressed RLE of a file once: an online tracker's top-k output
re-emits the same track under several classes, so a results file repeats most masks many times.
Areas are computed per distinct mask; intersections only for the (prediction frame, ground
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

# One compressed-RLE frame as json.dump writes it, with or without spaces:
# {"size": [h, w], "counts": "..."}; the group is the distinct part 'h, w], "counts": "...'.
FRAME_PATTERN = re.compile(rb'\{"size": ?\[(\d+, ?\d+\], ?"counts": ?"[^"]*)"\}')


def _unescape(counts: bytes) -> bytes:
    """JSON string body -> raw bytes (RLE strings contain a backslash, which JSON escapes)."""
    if b"\\" not in counts:
        return counts
    plain = counts.replace(b"\\\\", b"\\")
    if plain.count(b"\\") == counts.count(b"\\\\"):  # only escaped backslashes (the usual case)
        return plain
    return json.loads(b'"' + counts + b'"').encode("ascii")


class FrameTable:
    """Distinct per-frame masks: compressed RLE counts (bytes) with their (height, width)."""

    def __init__(self) -> None:
        self.counts: list[bytes | str] = []  # compressed RLE counts, as pycocotools takes them
        self._heights: list[int] = []
        self._widths: list[int] = []
        self._index: dict[tuple[int, int, bytes], int] = {}
        self.areas = np.zeros(0, dtype=np.int64)
        self.heights = np.zeros(0, dtype=np.int64)
        self.widths = np.zeros(0, dtype=np.int64)

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

    def append(self, height: int, width: int, counts: bytes | str) -> int:
        """Adds a mask without looking for an equal one already stored (ground truth rarely repeats)."""
        self.counts.append(counts)
        self._heights.append(height)
        self._widths.append(width)
        return len(self.counts) - 1

    def add_many(self, keys: list[bytes]) -> np.ndarray | None:
        """Adds frames cut out by FRAME_PATTERN (its group); returns their indices (n,), or None when
        a key is not a plain frame (an escaped quote inside the string): parse that file normally."""
        n = len(keys)
        distinct: dict[bytes, int] = {}
        for key in dict.fromkeys(keys):
            distinct[key] = len(distinct)
        # Keys are distinct already: append without the (h, w, counts) index that add() keeps.
        base = len(self.counts)
        for key in distinct:
            size, _, rest = key.partition(b"]")
            counts = rest.split(b'"', 3)[3]
            if (len(counts) - len(counts.rstrip(b"\\"))) % 2:
                return None
            height, width = size.split(b",")
            self.counts.append(_unescape(counts))
            self._heights.append(int(height))
            self._widths.append(int(width))
        mapping = np.arange(base, base + len(distinct), dtype=np.int64)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return mapping[np.fromiter(map(distinct.__getitem__, keys), dtype=np.int64, count=n)]

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
        return self


def intersections(table_a: FrameTable, ids_a: np.ndarray, table_b: FrameTable, ids_b: np.ndarray) -> np.ndarray:
    """Pixel count of mask ids_a[j] AND mask ids_b[j] for every j (same-size masks), int64 (P,)."""
    return intersect_counts([table_a.counts[i] for i in ids_a.tolist()],
                            [table_b.counts[i] for i in ids_b.tolist()], table_a.areas[ids_a])


def intersect_counts(counts_a: list[bytes], counts_b: list[bytes], areas_a: np.ndarray) -> np.ndarray:
    """Intersections (P,) int64 of the compressed RLEs counts_a[j] and counts_b[j] (same mask size);
    areas_a (P,) are the areas of counts_a."""
    count = len(counts_a)
    out = np.zeros(count, dtype=np.int64)
    crowd = np.ones(_PAIR_CHUNK, dtype=np.uint8)
    for start in range(0, count, _PAIR_CHUNK):
        stop = min(count, start + _PAIR_CHUNK)
        # Pair j of the batch gets size [j + 1, 1]: every cross pair then has mismatched sizes.
        left = [{"size": [j + 1, 1], "counts": c} for j, c in enumerate(counts_a[start:stop])]
        right = [{"size": [j + 1, 1], "counts": c} for j, c in enumerate(counts_b[start:stop])]
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
