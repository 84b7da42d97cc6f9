"""Ground truth and predictions in the official YouTube-VIS / OVIS JSON formats, as flat arrays.

Ground truth: `{"videos": [...], "categories": [...], "annotations": [{"id", "video_id",
"category_id", "iscrowd", "segmentations": [per frame RLE | polygons | null], "areas": [...]}]}`.
Results: `[{"video_id", "category_id", "score", "segmentations": [per frame RLE | null]}]`.

Reading a results file does not build a Python dict per frame: the frames (`{"size": [h, w],
"counts": "..."}`) are cut out of the text by one regular-expression pass and stored once per distinct
mask, and only the remaining skeleton goes through `json`. Frames written in another layout fall back
to ordinary parsing, so every valid file is read, fast or not.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .files import InputError, read_bytes, read_bytes_in_background  # noqa: F401 (re-exported)
from .rle import FRAME_PATTERN, FrameTable, InvalidMask, rle_from_segmentation

# OVIS per-frame occlusion labels -> scores (the official oviseval.py table).
OCCLUSION_SCORES = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}


def _parse_json(raw: bytes, source: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{source}: not UTF-8 text ({error})") from None


_AREA_TYPES = {int, float, type(None)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GroundTruth:
    """Videos, categories and the evaluated annotations (those of listed videos and categories).

    Annotation arrays (N,) keep file order. Frames of annotation n: frame_ids[frame_offsets[n]:
    frame_offsets[n + 1]], indices into `table` or -1 where the frame is null.
    """

    source: str
    video_ids: np.ndarray       # (V,) sorted
    video_heights: np.ndarray   # (V,)
    video_widths: np.ndarray    # (V,)
    video_lengths: np.ndarray   # (V,)
    category_ids: np.ndarray    # (K,) sorted
    category_names: list[str]
    ann_ids: np.ndarray         # (N,)
    ann_video: np.ndarray       # (N,) index into video_ids
    ann_category: np.ndarray    # (N,) index into category_ids
    ann_crowd: np.ndarray       # (N,) bool
    ann_avg_area: np.ndarray    # (N,) mean of the JSON `areas` that are non-null and non-zero
    ann_occ_score: np.ndarray   # (N,) OVIS occlusion score, NaN without `occlusion` labels
    frame_offsets: np.ndarray   # (N + 1,)
    frame_ids: np.ndarray       # (F,)
    table: FrameTable
    warnings: list[str]

    @property
    def has_occlusion(self) -> bool:
        return bool(len(self.ann_occ_score)) and not np.isnan(self.ann_occ_score).any()

    def video_index(self, video_ids: np.ndarray) -> np.ndarray:
        """Raw video ids (n,) -> index into video_ids, -1 where the video is not listed."""
        if len(self.video_ids) == 0:
            return np.full(len(video_ids), -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.video_ids, video_ids), len(self.video_ids) - 1)
        return np.where(self.video_ids[position] == video_ids, position, -1)


def load_ground_truth(source: str | os.PathLike | bytes | dict, name: str | None = None) -> GroundTruth:
    """Reads a YouTube-VIS / OVIS ground-truth file (plain or .gz), its bytes as read by `read_bytes`
    (`name` then names it in messages), or an already-parsed dict.

    From text, compressed-RLE frames are cut out by one regular-expression pass (FRAME_PATTERN) into
    the frame table and replaced by the placeholder 1 before `json` parses the rest; a file in another
    layout (or whose placeholders do not line up with the annotations' frames) is parsed normally."""
    if isinstance(source, dict):
        return _build_ground_truth(name or "<ground truth>", source, FrameTable(), None)
    if isinstance(source, (bytes, bytearray)):
        name, raw = name or "<ground truth>", bytes(source)
    else:
        name, raw = str(source), read_bytes(source)
    parts = FRAME_PATTERN.split(raw)
    table = FrameTable()
    matched = table.add_many(parts[1::4], parts[2::4], parts[3::4], deduplicate=False)
    if matched is not None and len(matched):
        try:
            dataset = json.loads(b"1".join(parts[0::4]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            dataset = None
        if dataset is not None:
            try:
                return _build_ground_truth(name, dataset, table, matched)
            except _LayoutMismatch:
                pass
    return _build_ground_truth(name, _parse_json(raw, name), FrameTable(), None)


class _LayoutMismatch(Exception):
    """The frame placeholders of a ground-truth text do not line up with its annotations' frames."""


def _build_ground_truth(name: str, dataset, table: FrameTable, matched: np.ndarray | None) -> GroundTruth:
    """GroundTruth of a parsed dataset. With `matched`, the frames cut out of the text are already in
    `table` and frame value 1 (the placeholder) stands for the next of them, in text order."""
    if not isinstance(dataset, dict):
        raise InputError(f"{name}: ground truth must be a JSON object with videos, categories, annotations")
    for key in ("videos", "categories"):
        if not isinstance(dataset.get(key), list):
            raise InputError(f"{name}: missing list '{key}'")
    annotations = dataset.get("annotations") or []
    if not isinstance(annotations, list):
        raise InputError(f"{name}: 'annotations' must be a list")
    warnings: list[str] = []

    videos = {}
    for i, video in enumerate(dataset["videos"]):
        if not isinstance(video, dict):
            raise InputError(f"{name}: videos[{i}] is not an object")
        for key in ("id", "height", "width"):
            if not _is_int(video.get(key)):
                raise InputError(f"{name}: videos[{i}] needs an integer '{key}'")
        length = video.get("length", len(video.get("file_names") or []))
        videos[video["id"]] = (video["height"], video["width"], length)
    video_ids = np.array(sorted(videos), dtype=np.int64)
    categories = {}
    for i, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise InputError(f"{name}: categories[{i}] needs an integer 'id'")
        categories[category["id"]] = str(category.get("name", category["id"]))
    category_ids = np.array(sorted(categories), dtype=np.int64)
    video_position = {int(v): i for i, v in enumerate(video_ids)}
    category_position = {int(k): i for i, k in enumerate(category_ids)}

    ids, ann_video, ann_category, crowd, avg_area, occ_score = [], [], [], [], [], []
    frame_parts: list[np.ndarray] = []
    offsets = [0]
    seen_ids: set = set()
    cursor = 0  # placeholders consumed so far (every annotation, listed or not, in file order)
    for i, ann in enumerate(annotations):
        where = f"{name}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise InputError(f"{where} is not an object")
        for key in ("id", "video_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise InputError(f"{where} needs an integer '{key}'")
        if ann["id"] in seen_ids:
            raise InputError(f"{where}: duplicate annotation id {ann['id']}")
        seen_ids.add(ann["id"])
        segmentations = ann.get("segmentations")
        if not isinstance(segmentations, list):
            raise InputError(f"{where} (id {ann['id']}) needs a 'segmentations' list")
        placeholders = None
        if matched is not None:
            # Frames are placeholders (1) and nulls in the usual layout; anything else goes frame by frame.
            kinds = set(map(type, segmentations))
            if kinds <= {int, type(None)}:
                values = np.array(segmentations, dtype=np.float64)
                placeholders = values == 1.0
                if not (placeholders | np.isnan(values) | (values == 0.0)).all():
                    raise _LayoutMismatch
        # The official evaluator keeps only annotations of listed videos and categories.
        if ann["video_id"] not in video_position or ann["category_id"] not in category_position:
            if matched is not None:
                cursor += int(placeholders.sum()) if placeholders is not None else \
                    sum(1 for value in segmentations if type(value) is int and value == 1)
            continue
        if placeholders is not None:
            frames = np.full(len(segmentations), -1, dtype=np.int64)
            count = int(placeholders.sum())
            if cursor + count > len(matched):
                raise _LayoutMismatch
            frames[placeholders] = matched[cursor:cursor + count]
            cursor += count
        else:
            height, width, _ = videos[ann["video_id"]]
            frame_list = []
            for t, segmentation in enumerate(segmentations):
                if matched is not None and type(segmentation) is int and segmentation == 1:
                    if cursor >= len(matched):
                        raise _LayoutMismatch
                    frame_list.append(int(matched[cursor]))
                    cursor += 1
                    continue
                if not segmentation:
                    frame_list.append(-1)
                    continue
                if type(segmentation) is dict and type(segmentation.get("counts")) is str \
                        and type(segmentation.get("size")) is list and len(segmentation["size"]) == 2:
                    # Compressed RLE, the usual case: stored as is (pycocotools takes str counts too).
                    frame_list.append(table.append(*segmentation["size"], segmentation["counts"]))
                    continue
                try:
                    h, w, counts = rle_from_segmentation(segmentation, height, width)
                except (ValueError, TypeError, KeyError) as error:
                    raise InputError(f"{where} (id {ann['id']}) frame {t}: {error}") from None
                frame_list.append(table.add(h, w, counts))
            frames = np.array(frame_list, dtype=np.int64)
        frame_parts.append(frames)
        offsets.append(offsets[-1] + len(frames))
        ids.append(ann["id"])
        ann_video.append(video_position[ann["video_id"]])
        ann_category.append(category_position[ann["category_id"]])
        crowd.append(bool(ann.get("iscrowd", 0)))
        areas = ann.get("areas")
        if areas is None:
            warnings.append(f"{where} (id {ann['id']}) has no 'areas'; using its mask areas")
            avg_area.append(None)  # filled from the masks below
        else:
            # Area ranges use the JSON areas (official), their mean over non-null, non-zero frames.
            # Checked in bulk: ints, floats and nulls only (not bools), and no NaN or infinity
            # (those are truthy, so they are among the present values).
            if not isinstance(areas, list) or not set(map(type, areas)) <= _AREA_TYPES:
                raise InputError(f"{where} (id {ann['id']}): 'areas' must be a list of numbers or nulls")
            present = [a for a in areas if a]
            values = np.array(present, dtype=np.float64)
            if not np.isfinite(values).all():
                raise InputError(f"{where} (id {ann['id']}): 'areas' must be a list of numbers or nulls")
            avg_area.append(float(values.mean()) if present else 0.0)
        occlusion = ann.get("occlusion")
        if occlusion is None:
            occ_score.append(math.nan)
        else:
            try:
                scores = sorted(OCCLUSION_SCORES[label] for label in occlusion if label is not None)
            except (KeyError, TypeError):
                raise InputError(f"{where} (id {ann['id']}): occlusion labels must be one of "
                                 f"{sorted(OCCLUSION_SCORES)} or null") from None
            if not scores:
                raise InputError(f"{where} (id {ann['id']}): every occlusion label is null")
            top = scores[-math.ceil(len(scores) / 2):]  # the most occluded half (official)
            occ_score.append(sum(top) / len(top))
    if matched is not None and cursor != len(matched):
        raise _LayoutMismatch
    frame_array = np.concatenate(frame_parts) if frame_parts else np.zeros(0, dtype=np.int64)
    offsets_array = np.array(offsets, dtype=np.int64)
    try:
        table.finalize()
    except InvalidMask as bad:
        position = int(np.flatnonzero(frame_array == bad.index)[0])
        n = int(np.searchsorted(offsets_array, position, side="right") - 1)
        raise InputError(f"{name}: annotation id {ids[n]} (video {int(video_ids[ann_video[n]])}) frame "
                         f"{position - offsets_array[n]}: invalid RLE: {bad.reason}") from None
    for n, value in enumerate(avg_area):
        if value is None:
            frames = frame_array[offsets_array[n]:offsets_array[n + 1]]
            areas = table.areas[frames[frames >= 0]]
            areas = areas[areas > 0]
            avg_area[n] = float(areas.mean()) if len(areas) else 0.0
    return GroundTruth(
        source=name, video_ids=video_ids,
        video_heights=np.array([videos[v][0] for v in video_ids.tolist()], dtype=np.int64),
        video_widths=np.array([videos[v][1] for v in video_ids.tolist()], dtype=np.int64),
        video_lengths=np.array([videos[v][2] for v in video_ids.tolist()], dtype=np.int64),
        category_ids=category_ids, category_names=[categories[k] for k in category_ids.tolist()],
        ann_ids=np.array(ids, dtype=np.int64), ann_video=np.array(ann_video, dtype=np.int64),
        ann_category=np.array(ann_category, dtype=np.int64), ann_crowd=np.array(crowd, dtype=bool),
        ann_avg_area=np.array(avg_area, dtype=np.float64),
        ann_occ_score=np.array(occ_score, dtype=np.float64),
        frame_offsets=offsets_array, frame_ids=frame_array, table=table, warnings=warnings,
    )


@dataclass
class Predictions:
    """Results entries (R,) in file order. Entries whose `segmentations` lists are identical share one
    track (an online tracker's top-k output re-emits each track under several classes): frames of
    track l are track_frame_ids[track_offsets[l]:track_offsets[l + 1]], indices into `table` or -1
    where the frame is null; entry r has the frames of track entry_track[r]."""

    source: str
    video_ids: np.ndarray        # (R,) raw video ids
    category_ids: np.ndarray     # (R,) raw category ids
    scores: np.ndarray           # (R,) float64
    entry_track: np.ndarray      # (R,) index into the L distinct segmentation lists
    track_offsets: np.ndarray    # (L + 1,)
    track_frame_ids: np.ndarray  # (F,)
    table: FrameTable
    avg_area: np.ndarray         # (R,) mean mask area over non-null, non-empty entries (official)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def lengths(self) -> np.ndarray:
        """Number of segmentation entries of each result (R,)."""
        return np.diff(self.track_offsets)[self.entry_track]

    @property
    def frame_offsets(self) -> np.ndarray:
        """(R + 1,) offsets into `frame_ids`, one segment per entry (expanded from the tracks)."""
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return offsets

    @property
    def frame_ids(self) -> np.ndarray:
        """(sum of lengths,) frames of every entry in order (expanded from the tracks)."""
        lengths = self.lengths
        owner = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(len(owner)) - (np.cumsum(lengths) - lengths)[owner]
        return self.track_frame_ids[self.track_offsets[self.entry_track][owner] + position]


def _check_entry(entry, index: int, source: str, segmentations_placeholder: bool = False):
    where = f"{source}: entry {index}"
    if not isinstance(entry, dict):
        raise InputError(f"{where} is not an object")
    for key in ("video_id", "category_id"):
        if not _is_int(entry.get(key)):
            raise InputError(f"{where} needs an integer '{key}' (got {entry.get(key)!r})")
    if not _is_number(entry.get("score")):
        raise InputError(f"{where} (video {entry['video_id']}) needs a finite number 'score' "
                         f"(got {entry.get('score')!r})")
    segmentations = entry.get("segmentations")
    if not isinstance(segmentations, list) and not segmentations_placeholder:
        raise InputError(f"{where} (video {entry['video_id']}) needs a 'segmentations' list")
    return segmentations


def _frame(value, table: FrameTable, where: str) -> int:
    if not value:
        return -1
    if isinstance(value, dict) and "size" in value and "counts" in value:
        size = value["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
            raise InputError(f"{where}: 'size' must be [height, width]")
        try:
            h, w, counts = rle_from_segmentation(value, size[0], size[1])
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            raise InputError(f"{where}: {error}") from None
        return table.add(h, w, counts)
    raise InputError(f"{where}: a frame must be an RLE {{'size', 'counts'}} or null, got {str(value)[:60]}")


def _entry_arrays(entries: list, source: str, placeholder: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video_ids, category_ids, scores) of the entries, checked in bulk; the first bad entry raises."""
    try:
        if not all(type(entry) is dict for entry in entries):
            raise TypeError
        video_ids = [entry.get("video_id") for entry in entries]
        category_ids = [entry.get("category_id") for entry in entries]
        scores = [entry.get("score") for entry in entries]
        if not (set(map(type, video_ids)) <= {int} and set(map(type, category_ids)) <= {int}
                and set(map(type, scores)) <= {int, float}):
            raise TypeError
        arrays = (np.array(video_ids, dtype=np.int64), np.array(category_ids, dtype=np.int64),
                  np.array(scores, dtype=np.float64))
        if not np.isfinite(arrays[2]).all():
            raise TypeError
        return arrays
    except (TypeError, OverflowError):
        for i, entry in enumerate(entries):  # name the first bad entry
            _check_entry(entry, i, source, placeholder)
        raise InputError(f"{source}: entries with ids beyond 64-bit integers") from None


def _finish(source: str, video_ids, category_ids, scores, entry_track: np.ndarray,
            track_lengths: np.ndarray, track_frame_ids, table: FrameTable) -> Predictions:
    num_tracks = len(track_lengths)
    offsets = np.zeros(num_tracks + 1, dtype=np.int64)
    np.cumsum(track_lengths, out=offsets[1:])
    track_frame_ids = np.asarray(track_frame_ids, dtype=np.int64)
    try:
        table.finalize()
    except InvalidMask as bad:
        position = int(np.flatnonzero(track_frame_ids == bad.index)[0])
        track = int(np.searchsorted(offsets, position, side="right") - 1)
        entry = int(np.flatnonzero(np.asarray(entry_track) == track)[0])
        raise InputError(f"{source}: entry {entry} (video {int(video_ids[entry])}) frame {position - offsets[track]}: "
                         f"invalid RLE: {bad.reason}") from None
    areas = np.where(track_frame_ids >= 0, table.areas[np.maximum(track_frame_ids, 0)], 0) if len(table) else \
        np.zeros(len(track_frame_ids), dtype=np.int64)
    owner = np.repeat(np.arange(num_tracks), track_lengths)
    counted = areas > 0  # the official mean skips null frames and empty masks alike
    total = np.bincount(owner, weights=np.where(counted, areas, 0).astype(np.float64), minlength=num_tracks)
    number = np.bincount(owner, weights=counted.astype(np.float64), minlength=num_tracks)
    track_area = np.divide(total, number, out=np.zeros(num_tracks), where=number > 0)
    entry_track = np.asarray(entry_track, dtype=np.int64)
    return Predictions(
        source=source, video_ids=video_ids, category_ids=category_ids, scores=scores,
        entry_track=entry_track, track_offsets=offsets, track_frame_ids=track_frame_ids, table=table,
        avg_area=track_area[entry_track] if len(entry_track) else np.zeros(0),
    )


def predictions_from_list(entries: list, source: str = "<results>") -> Predictions:
    """In-memory results (the official list of dicts) -> Predictions. Entries holding the same
    `segmentations` list object (top-k re-emission of one track) share one track."""
    if not isinstance(entries, list):
        raise InputError(f"{source}: results must be a JSON list of objects, got {type(entries).__name__}")
    segmentation_lists = [_check_entry(entry, i, source) for i, entry in enumerate(entries)]
    video_ids, category_ids, scores = _entry_arrays(entries, source, False)
    # One track per distinct list content (as the text reader gets by comparing the lists' text):
    # lists are parsed once per object, then equal frame sequences share a track.
    table = FrameTable()
    track_of_object: dict[int, int] = {}
    track_of_frames: dict[tuple, int] = {}
    frame_ids: list[int] = []
    lengths: list[int] = []
    entry_track = np.empty(len(entries), dtype=np.int64)
    for i, segmentations in enumerate(segmentation_lists):
        track = track_of_object.get(id(segmentations))
        if track is None:
            frames = tuple(_frame(value, table, f"{source}: entry {i} frame {t}") for t, value in enumerate(segmentations))
            track = track_of_frames.get(frames)
            if track is None:
                track = track_of_frames[frames] = len(lengths)
                lengths.append(len(frames))
                frame_ids.extend(frames)
            track_of_object[id(segmentations)] = track
        entry_track[i] = track
    return _finish(source, video_ids, category_ids, scores, entry_track,
                   np.array(lengths, dtype=np.int64), frame_ids, table)


# The `segmentations` key of a results entry as json.dump writes it (with or without the space).
_LIST_KEYS = (b'"segmentations": [', b'"segmentations":[')


def _cut_segmentation_lists(raw: bytes) -> tuple[bytes, list[bytes]] | None:
    """Cuts the value of every `"segmentations": [...]` out of the text: returns the remaining text
    with the i-th list replaced by the number i, and the lists as byte strings. None when the text is
    not in the usual layout (the caller then parses it whole).

    A list ends at the last ']' before the next entry's key (the entry's other values, numbers, hold
    none); the last list at the first `"}]` (frames are `{..."counts": "..."}` and counts strings
    hold no quote), at an earlier `null]`, or right away for `[]`. A wrong cut cannot go unnoticed:
    a JSON value starting at a '[' is valid only up to its own closing bracket, and every cut is
    parsed (the skeleton must give entry i the placeholder i)."""
    key = next((k for k in _LIST_KEYS if raw.find(k) >= 0), None)
    if key is None:
        return None
    find = raw.find
    brackets = []
    start = find(key)
    while start >= 0:
        brackets.append(start + len(key) - 1)
        start = find(key, start + len(key))
    # Ends: the last ']' before the next key (one short backward scan per list).
    next_keys = brackets[1:]
    ends = [raw.rfind(b"]", bracket, next_key - len(key) + 1) + 1 for bracket, next_key in zip(brackets, next_keys)]
    last = brackets[-1]
    if raw[last + 1:last + 2] == b"]":  # an empty list
        end = last + 2
    else:
        end = find(b'"}]', last)
        end = len(raw) if end < 0 else end + 3
        last_null = find(b"null]", last, end)
        if last_null >= 0:
            end = last_null + 5
        elif end == len(raw):
            return None
    ends.append(end)
    pieces, lists = [], []
    position = 0
    for index, (bracket, end) in enumerate(zip(brackets, ends)):
        if end <= bracket:
            return None
        pieces.append(raw[position:bracket])
        pieces.append(b"%d" % index)
        lists.append(raw[bracket:end])
        position = end
    pieces.append(raw[position:])
    return b"".join(pieces), lists


def _parse_tracks(blobs: list[bytes], table: FrameTable) -> tuple[np.ndarray, np.ndarray] | None:
    """Distinct segmentation lists (JSON byte strings) -> (lengths (L,), frame ids (F,)) with frames
    added to `table`; None when some frame is not in the usual layout (parse the file normally)."""
    text = b"[" + b",".join(blobs) + b"]"
    parts = FRAME_PATTERN.split(text)
    matched = table.add_many(parts[1::4], parts[2::4], parts[3::4])
    if matched is None:
        return None
    # Every frame in the usual layout becomes the placeholder 1 (no frame can legitimately be 1).
    try:
        tracks = json.loads(b"1".join(parts[0::4]))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(tracks, list) and len(tracks) == len(blobs) and all(type(t) is list for t in tracks)):
        return None
    lengths = np.fromiter(map(len, tracks), dtype=np.int64, count=len(tracks))
    flat = list(itertools.chain.from_iterable(tracks))
    try:
        values = np.array(flat, dtype=np.float64)  # placeholder 1.0, null NaN, anything else fails
    except (TypeError, ValueError):
        return None
    # Falsy frames (null, 0) are absent frames, as in the official code.
    if not (np.isin(values[~np.isnan(values)], (0.0, 1.0)).all() and int((values == 1.0).sum()) == len(matched)):
        return None
    frame_ids = np.full(len(values), -1, dtype=np.int64)
    frame_ids[values == 1.0] = matched
    return lengths, frame_ids


def load_predictions(source: str | os.PathLike | bytes | list, name: str | None = None) -> Predictions:
    """Reads a results file (plain or .gz), raw JSON bytes, or an in-memory results list.

    Fast path: every `segmentations` list is cut out of the text as one byte string, identical lists
    are parsed once (one track), and only the entries' skeleton goes through `json`. Text in another
    layout is parsed normally, so every valid file is read and errors are reported at their place."""
    if isinstance(source, list):
        return predictions_from_list(source, name or "<results>")
    if isinstance(source, (bytes, bytearray)):
        name, raw = name or "<results>", bytes(source)
    else:
        name, raw = str(source), read_bytes(source)
    fast = _load_predictions_fast(raw, name)
    if fast is not None:
        return fast
    return predictions_from_list(_parse_json(raw, name), name)


def _load_predictions_fast(raw: bytes, name: str) -> Predictions | None:
    cut = _cut_segmentation_lists(raw)
    if cut is None:
        return None
    skeleton, lists = cut
    try:
        entries = json.loads(skeleton)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(entries, list) or len(entries) != len(lists):
        return None
    # The i-th entry must hold the i-th cut list (placeholder i), else the layout is unusual.
    if not all(type(entry) is dict and type(entry.get("segmentations")) is int and entry["segmentations"] == i
               for i, entry in enumerate(entries)):
        return None
    video_ids, category_ids, scores = _entry_arrays(entries, name, True)
    track_of_list: dict[bytes, int] = {}
    entry_track = np.fromiter((track_of_list.setdefault(blob, len(track_of_list)) for blob in lists),
                              dtype=np.int64, count=len(lists))
    table = FrameTable()
    parsed = _parse_tracks(list(track_of_list), table)
    if parsed is None:
        return None
    lengths, frame_ids = parsed
    return _finish(name, video_ids, category_ids, scores, entry_track, lengths, frame_ids, table)
