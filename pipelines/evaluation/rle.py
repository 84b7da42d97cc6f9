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
# {"size": [h, w], "counts": "..."}; groups: height, width, counts (JSON string body).
FRAME_PATTERN = re.compile(rb'\{"size": ?\[(\d+), ?(\d+)\], ?"counts": ?"([^"]*)"\}')


def _unescape(counts: bytes) -> bytes:
    """JSON string body -> raw bytes (RLE strings contain a backslash, which JSON escapes)."""
    if b"\\" not in counts:
        return counts
    plain = counts.replace(b"\\\\", b"\\")
    if plain.count(b"\\") == counts.count(b"\\\\"):  # only escaped backslashes (the usual case)
        return plain
    return json.loads(b'"' + counts + b'"').encode("ascii")


def _parse_ints(digits: list[bytes]) -> np.ndarray:
    """Decimal byte strings (n,) -> int64 (n,); a file holds few distinct mask sizes, so each distinct
    string is converted once."""
    value = {key: int(key) for key in dict.fromkeys(digits)}
    return np.fromiter(map(value.__getitem__, digits), dtype=np.int64, count=len(digits))


def _has_escaped_end(joined: bytes) -> bool:
    """Whether a string body of `joined` (bodies joined by '"', which no body contains) ends in an odd
    number of backslashes: its closing quote was escaped, so FRAME_PATTERN cut the string short."""
    if not joined.endswith(b"\\") and joined.find(b'\\"') < 0:
        return False  # the usual case: no body ends in a backslash (checked without copying the text)
    text = joined + b'"'
    position = text.find(b'\\"')
    while position >= 0:
        start = position
        while start > 0 and text[start - 1] == 92:  # 92: backslash
            start -= 1
        if (position + 1 - start) % 2:
            return True
        position = text.find(b'\\"', position + 2)
    return False


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

    def add_many(self, heights: list[bytes], widths: list[bytes], counts: list[bytes],
                 deduplicate: bool = True) -> np.ndarray | None:
        """Adds frames cut out by FRAME_PATTERN (its three groups, per frame); returns their indices
        (n,), or None when a frame is not a plain one (an escaped quote inside the string): parse
        that file normally. With `deduplicate`, equal frames are stored once (results repeat masks);
        ground truth, which rarely does, skips that pass. The work is in C but for one dict pass."""
        n = len(counts)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        height, width = _parse_ints(heights), _parse_ints(widths)
        if not deduplicate:
            return self._add_distinct(height, width, counts, np.arange(n))
        index = {key: i for i, key in enumerate(dict.fromkeys(counts))}
        frame_index = np.fromiter(map(index.__getitem__, counts), dtype=np.int64, count=n)
        first = np.zeros(len(index), dtype=np.int64)
        first[frame_index[::-1]] = np.arange(n)[::-1]  # first frame of each distinct counts string
        if not ((height[first][frame_index] == height).all() and (width[first][frame_index] == width).all()):
            # One counts string under several sizes (rare): distinct per (height, width, counts).
            index = {key: i for i, key in enumerate(dict.fromkeys(zip(heights, widths, counts)))}
            frame_index = np.fromiter(map(index.__getitem__, zip(heights, widths, counts)),
                                      dtype=np.int64, count=n)
            first = np.zeros(len(index), dtype=np.int64)
            first[frame_index[::-1]] = np.arange(n)[::-1]
            distinct = [key[2] for key in index]
        else:
            distinct = list(index)
        return self._add_distinct(height[first], width[first], distinct, frame_index)

    def _add_distinct(self, height: np.ndarray, width: np.ndarray, distinct: list[bytes],
                      frame_index: np.ndarray) -> np.ndarray | None:
        """Stores the masks `distinct` (JSON string bodies) of sizes (height, width); returns
        frame_index shifted to table indices, or None when a body ends in an escaped quote."""
        joined = b'"'.join(distinct)
        if b"\\" in joined:
            if _has_escaped_end(joined):
                return None
            plain = joined.replace(b"\\\\", b"\\")
            if plain.count(b"\\") == joined.count(b"\\\\"):  # only escaped backslashes (the usual case)
                distinct = plain.split(b'"')
            else:
                distinct = [_unescape(key) for key in distinct]
        base = len(self.counts)
        self.counts.extend(distinct)
        self._heights.extend(height.tolist())
        self._widths.extend(width.tolist())
        return frame_index + base

    def finalize(self) -> "FrameTable":
        """Computes the area of every mask not measured yet (call after adding)."""
        done = len(self.areas)
        # A mask's area does not depend on its size (pycocotools only stores it): one shared list.
        size = [1, 1]
        new = [{"size": size, "counts": c} for c in self.counts[done:]]
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
    # Pair j of a batch gets size [j + 1, 1]: every cross pair then has mismatched sizes.
    sizes = [[j + 1, 1] for j in range(_PAIR_CHUNK)]
    for start in range(0, count, _PAIR_CHUNK):
        stop = min(count, start + _PAIR_CHUNK)
        left = [{"size": size, "counts": c} for size, c in zip(sizes, counts_a[start:stop])]
        right = [{"size": size, "counts": c} for size, c in zip(sizes, counts_b[start:stop])]
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
