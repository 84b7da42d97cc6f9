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


class InvalidMask(ValueError):
    """A stored mask that pycocotools must not see (it would read past the string or loop over ~4e9
    runs); `index` is its position in the FrameTable."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index
        self.reason = reason


_MAX_CHARS_PER_RUN = 6  # 6 x 5 bits: enough for any mask below 2^29 pixels (pycocotools shifts a 32-bit int)
_MAX_PIXELS = 1 << 29
_CHUNK_BYTES = 1 << 16


def decode_compressed_rles(counts: list, heights, widths) -> tuple[tuple[int, str] | None, np.ndarray]:
    """(the first invalid RLE as (index, reason) or None, the areas (n,) int64 of the valid ones).

    Decodes every string at once, as pycocotools' rleFrString does: characters '0'..'o' (6 bits each:
    5 of value and a continuation bit; the last character of a number carries its sign), then every run
    length from the fourth on is a difference to the one two places before. Valid: only those
    characters, no number cut off at the end of the string or longer than 6 characters, every run
    length >= 0, and the runs summing to height x width. Otherwise pycocotools reads past the string
    or loops forever (an IoU walk over masks of different pixel totals). Linear in the total length.
    The areas (pixels of the odd runs) come from the same decode, as pycocotools' `area` gives them.
    """
    n = len(counts)
    areas = np.zeros(n, dtype=np.int64)
    if n == 0:
        return None, areas
    data = [c.encode("ascii", "replace") if isinstance(c, str) else c for c in counts]
    lengths = np.fromiter(map(len, data), dtype=np.int64, count=n)
    heights, widths = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    pixels = heights * widths
    found = _Findings()
    bad = np.flatnonzero((heights <= 0) | (widths <= 0) | (pixels >= _MAX_PIXELS))
    if len(bad):
        i = int(bad[0])
        found.add(i, f"size [{heights[i]}, {widths[i]}] is not a positive height and width (below 2^29 pixels)")
    empty = np.flatnonzero(lengths == 0)
    if len(empty):  # no runs at all: zero pixels, never height x width > 0
        i = int(empty[0])
        found.add(i, f"an empty RLE string cannot describe a [{heights[i]}, {widths[i]}] mask")
    # The strings before the first problem so far, in pieces of ~64 KB of text: the arrays stay in
    # cache and their memory is reused (fresh pages cost more than the arithmetic here).
    limit = found.first if found.first is not None else n
    ends = np.cumsum(lengths)
    start = 0
    while start < limit:
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - lengths[start] + _CHUNK_BYTES, side="right")))
        stop = min(stop, limit)
        problem = _check_piece(b"".join(data[start:stop]), lengths[start:stop], heights[start:stop],
                               widths[start:stop], pixels[start:stop], areas[start:stop])
        if problem is not None:
            found.add(start + problem[0], problem[1])
            break
        start = stop
    return found.result(), areas


class _Findings:
    """The problem with the lowest index among those found."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.reason = ""

    def add(self, index: int, reason: str) -> None:
        if self.first is None or index < self.first:
            self.first, self.reason = int(index), reason

    def result(self) -> tuple[int, str] | None:
        return None if self.first is None else (self.first, self.reason)


def _check_piece(joined: bytes, lengths: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                 pixels: np.ndarray, areas: np.ndarray) -> tuple[int, str] | None:
    """decode_compressed_rles on non-empty strings (areas (n,) filled in place). Every check runs (a string with bad characters or
    a cut-off number decodes to garbage from there on, which can only flag later strings), and the
    lowest flagged index wins: strings before the first invalid one decode exactly."""
    n = len(lengths)
    found = _Findings()
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    chars = np.frombuffer(joined, dtype=np.uint8) - np.uint8(48)  # '0'..'o' -> 0..63, others > 63
    outside = np.flatnonzero(chars > 63)
    if len(outside):
        i = int(np.searchsorted(offsets, outside[0], side="right") - 1)
        found.add(i, f"character {chr((int(chars[outside[0]]) + 48) % 256)!r} cannot occur in a compressed RLE")
    is_end = chars < 32  # no continuation bit: the number's last character
    cut = np.flatnonzero(~is_end[offsets[1:] - 1])
    if len(cut):
        found.add(int(cut[0]), "the RLE string ends in the middle of a number (truncated)")
    ends = np.flatnonzero(is_end)
    if len(ends) == 0:
        return found.result()
    number_length = np.diff(ends, prepend=-1)
    too_long = np.flatnonzero(number_length > _MAX_CHARS_PER_RUN)
    if len(too_long):
        i = int(np.searchsorted(offsets, ends[too_long[0]], side="right") - 1)
        found.add(i, f"a run length of {int(number_length[too_long[0]])} characters does not fit 30 bits")
        number_length = np.minimum(number_length, _MAX_CHARS_PER_RUN)  # garbage from here on, bounded work
    # A number's value: 5 bits per character, its last character the most significant, sign-extended
    # when that character has bit 0x10. Most numbers are one character; longer ones are few.
    last = chars[ends]
    values = (last & 0x1F).astype(np.int32)
    longer = np.flatnonzero(number_length > 1)
    j = 1
    while len(longer):
        values[longer] = (values[longer] << 5) | (chars[ends[longer] - j] & 0x1F)
        j += 1
        longer = longer[number_length[longer] > j]
    shift = (5 * number_length).astype(np.int32)
    values -= ((last >> 4) & 1).astype(np.int32) << shift  # sign bit set: value - 2^(5 x length)
    # Numbers of mask i: [first[i], first[i] + per_mask[i]). Run m of a mask: m = 0 as read; odd m the
    # running sum of the mask's values at odd m, even m >= 2 of its values at even m from m = 2. Both
    # chains are runs of one parity of the global index, so two cumulative sums over the even and the
    # odd global positions serve every mask: run = cumsum here - cumsum just before the mask's chain.
    first = np.searchsorted(ends, offsets[:-1])
    per_mask = np.diff(first, append=len(ends))
    has_runs = per_mask > 0  # a string cut off before its first number has none (flagged above)
    starts = first[has_runs]
    chained = values.astype(np.int64)
    chained[starts] = 0  # m = 0 belongs to no chain
    sums = np.empty_like(chained)
    sums[0::2] = np.cumsum(chained[0::2])
    sums[1::2] = np.cumsum(chained[1::2])
    before_odd = np.where(starts >= 1, sums[np.maximum(starts - 1, 0)], 0)  # same parity as m = 1
    before_even = np.where(starts >= 2, sums[np.maximum(starts - 2, 0)], 0)  # same parity as m = 0
    counts = per_mask[has_runs]
    odd = np.zeros(len(ends), dtype=bool)
    odd[1::2] = True
    odd ^= np.repeat((starts & 1).astype(bool), counts)  # parity of the index inside the mask
    runs = sums - np.where(odd, np.repeat(before_odd, counts), np.repeat(before_even, counts))
    runs[starts] = values[starts]
    masks = np.flatnonzero(has_runs)
    negative_run = np.flatnonzero(runs < 0)
    if len(negative_run):
        found.add(int(masks[np.searchsorted(starts, negative_run[0], side="right") - 1]), "a run length is negative")
    totals = np.add.reduceat(runs, starts)
    areas[has_runs] = np.add.reduceat(np.where(odd, runs, 0), starts)
    wrong = np.flatnonzero(totals != pixels[has_runs])
    if len(wrong):
        i = int(masks[wrong[0]])
        found.add(i, f"the run lengths sum to {int(totals[wrong[0]])} pixels, but its size [{heights[i]}, "
                     f"{widths[i]}] has {int(pixels[i])}")
    return found.result()


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
        """Checks and computes the area of every mask not measured yet (call after adding). An invalid
        RLE raises InvalidMask (pycocotools could read out of bounds or never finish on it)."""
        done = len(self.areas)
        problem, areas = decode_compressed_rles(self.counts[done:], self._heights[done:], self._widths[done:])
        if problem is not None:
            raise InvalidMask(done + problem[0], problem[1])
        self.areas = np.concatenate([self.areas, areas])
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
