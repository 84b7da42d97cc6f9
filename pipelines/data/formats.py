"""Readers for the published annotation formats, into plain per-video records.

- YouTube-VIS 2019 / 2021 / 2022 and OVIS: ``{"videos": [{id, file_names, height, width, length}],
  "annotations": [{id, video_id, category_id, iscrowd, segmentations, areas, bboxes}],
  "categories": [{id, name}]}`` where ``segmentations[t]`` is compressed RLE, uncompressed RLE
  (``counts`` a list), polygons, or null (absent in frame t). OVIS annotations may also carry
  ``occlusion[t]`` in {"no_occlusion", "slight_occlusion", "severe_occlusion", null}.
- COCO instances: ``{"images": [{id, file_name, height, width}], "annotations": [{id, image_id,
  category_id, iscrowd, segmentation, area, bbox}], "categories": [...]}``; every image becomes a
  one-frame record (a pseudo-video source).

Parsing checks the structure (unknown video / image / category ids, segmentation count differing
from the video length, duplicate ids). Each problem is a `Problem`; the caller's policy either
raises `DataFormatError` with the problem's message (``fail``) or skips the annotation and keeps
the problem for the manifest (``skip``). Segmentations are converted to compressed RLE later, in
parallel, by `segmentation_to_rle`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import numpy as np

from pipelines.data.catalog import Category, SplitInfo

ErrorPolicy = Literal["fail", "skip"]

OCCLUSION_CODES = {"no_occlusion": 0, "slight_occlusion": 1, "severe_occlusion": 2}
OCCLUSION_NAMES = {v: k for k, v in OCCLUSION_CODES.items()}


class DataFormatError(ValueError):
    """Invalid dataset input; the message names the file and the video / annotation / frame."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem found in the input, recorded in the manifest under the `skip` policy."""

    kind: str  # missing_frame | corrupt_frame | frame_size_mismatch | segmentation_count_mismatch |
    #            unknown_video | unknown_category | invalid_segmentation | duplicate_id | empty_video
    message: str
    video_id: Optional[int] = None
    annotation_id: Optional[int] = None
    frame: Optional[int] = None
    file: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class ProblemLog:
    """Collects problems; under `fail` the first one raises."""

    def __init__(self, policy: ErrorPolicy):
        if policy not in ("fail", "skip"):
            raise ValueError(f"on_error: expected 'fail' or 'skip', got {policy!r}")
        self.policy = policy
        self.problems: list[Problem] = []

    def report(self, problem: Problem) -> None:
        if self.policy == "fail":
            raise DataFormatError(problem.message)
        self.problems.append(problem)


@dataclasses.dataclass
class InstanceRecord:
    annotation_id: int
    category_id: int  # in the split's category table (COCO ids already relabelled for pseudo-videos)
    source_category_id: int
    iscrowd: bool
    segmentations: list[Any]  # per frame: raw segmentation (RLE dict / polygons) or None
    areas: list[Optional[float]]
    bboxes: list[Optional[list[float]]]
    occlusion: Optional[list[int]] = None  # per frame code (OCCLUSION_CODES), -1 where null


@dataclasses.dataclass
class VideoRecord:
    video_id: int
    height: int
    width: int
    length: int
    file_names: list[str]
    instances: list[InstanceRecord]


@dataclasses.dataclass
class ParsedSplit:
    format: Literal["ytvis", "coco"]
    categories: tuple[Category, ...]
    videos: list[VideoRecord]
    problems: list[Problem]
    notes: dict[str, int]  # expected filtering, counted (e.g. COCO classes without a target class)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataFormatError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def parse_split(info: SplitInfo, data: Any, policy: ErrorPolicy = "fail") -> ParsedSplit:
    """Parse an annotation JSON (already loaded) of the split described by `info`."""
    source = info.annotations
    if not isinstance(data, dict):
        raise DataFormatError(f"{source}: expected a JSON object at the top level")
    if "videos" in data:
        return _parse_ytvis(info, data, policy)
    if "images" in data:
        return _parse_coco(info, data, policy)
    raise DataFormatError(f"{source}: neither a YouTube-VIS JSON (no 'videos') nor a COCO JSON (no 'images')")


def _json_categories(data: dict, source: str) -> tuple[Category, ...]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataFormatError(f"{source}: 'categories' must be a non-empty list")
    out = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataFormatError(f"{source}: categories[{i}]: needs 'id' and 'name'")
        out.append(Category(_int(c["id"], f"{source}: categories[{i}].id"), str(c["name"])))
    ids = [c.id for c in out]
    if len(set(ids)) != len(ids):
        raise DataFormatError(f"{source}: duplicate category ids in 'categories'")
    return tuple(sorted(out, key=lambda c: c.id))


def _parse_ytvis(info: SplitInfo, data: dict, policy: ErrorPolicy) -> ParsedSplit:
    source = info.annotations
    log = ProblemLog(policy)
    categories = info.categories if info.categories is not None else _json_categories(data, source)
    known_categories = {c.id for c in categories}

    videos: dict[int, VideoRecord] = {}
    for i, v in enumerate(data.get("videos") or []):
        where = f"{source}: videos[{i}]"
        if not isinstance(v, dict):
            raise DataFormatError(f"{where}: expected an object")
        for key in ("id", "file_names", "height", "width"):
            if key not in v:
                raise DataFormatError(f"{where}: missing '{key}'")
        vid = _int(v["id"], f"{where}.id")
        file_names = v["file_names"]
        if not isinstance(file_names, list) or not file_names or not all(isinstance(f, str) for f in file_names):
            raise DataFormatError(f"{where} (video {vid}): 'file_names' must be a non-empty list of strings")
        length = _int(v.get("length", len(file_names)), f"{where}.length")
        if length != len(file_names):
            log.report(Problem("segmentation_count_mismatch",
                               f"{source}: video {vid}: 'length' is {length} but it lists {len(file_names)} file_names",
                               video_id=vid))
            continue
        if vid in videos:
            log.report(Problem("duplicate_id", f"{source}: video id {vid} appears twice in 'videos'", video_id=vid))
            continue
        videos[vid] = VideoRecord(vid, _int(v["height"], f"{where}.height"), _int(v["width"], f"{where}.width"),
                                  length, list(file_names), [])

    seen_annotations: set[int] = set()
    for i, a in enumerate(data.get("annotations") or []):
        where = f"{source}: annotations[{i}]"
        if not isinstance(a, dict):
            raise DataFormatError(f"{where}: expected an object")
        aid = _int(a.get("id", i), f"{where}.id")
        vid = _int(a.get("video_id"), f"{where}.video_id")
        cid = _int(a.get("category_id"), f"{where}.category_id")
        if aid in seen_annotations:
            log.report(Problem("duplicate_id", f"{source}: annotation id {aid} appears twice (again at annotations[{i}], "
                               f"video {vid}: this later one is left out)", video_id=vid, annotation_id=aid))
            continue
        seen_annotations.add(aid)
        video = videos.get(vid)
        if video is None:
            log.report(Problem("unknown_video", f"{source}: annotation {aid} refers to unknown video id {vid}",
                               video_id=vid, annotation_id=aid))
            continue
        if cid not in known_categories:
            log.report(Problem("unknown_category",
                               f"{source}: annotation {aid} (video {vid}) has unknown category id {cid}",
                               video_id=vid, annotation_id=aid))
            continue
        segms = a.get("segmentations")
        if not isinstance(segms, list) or len(segms) != video.length:
            got = len(segms) if isinstance(segms, list) else type(segms).__name__
            log.report(Problem("segmentation_count_mismatch",
                               f"{source}: annotation {aid} (video {vid}) has {got} segmentations for a video of "
                               f"{video.length} frames", video_id=vid, annotation_id=aid))
            continue
        areas = _per_frame(a.get("areas"), video.length)
        bboxes = _per_frame(a.get("bboxes"), video.length)
        occlusion = None
        if isinstance(a.get("occlusion"), list) and len(a["occlusion"]) == video.length:
            occlusion = [OCCLUSION_CODES.get(o, -1) if o is not None else -1 for o in a["occlusion"]]
        video.instances.append(InstanceRecord(aid, cid, cid, bool(a.get("iscrowd", 0)), segms, areas, bboxes, occlusion))

    ordered = [videos[k] for k in sorted(videos)]  # sorted ids, as detectron2 loads them
    for v in ordered:
        v.instances.sort(key=lambda inst: inst.annotation_id)
    return ParsedSplit("ytvis", tuple(categories), ordered, log.problems, {})


def _per_frame(values: Any, length: int) -> list:
    if isinstance(values, list) and len(values) == length:
        return list(values)
    return [None] * length


def _parse_coco(info: SplitInfo, data: dict, policy: ErrorPolicy) -> ParsedSplit:
    source = info.annotations
    log = ProblemLog(policy)
    json_categories = _json_categories(data, source)
    json_ids = {c.id for c in json_categories}
    cmap = info.category_map
    if info.categories is not None:
        categories = info.categories
    else:
        categories = json_categories  # custom COCO: labels are already in its own table
    target_ids = {c.id for c in categories}
    notes = {"annotations_of_unmapped_categories": 0, "images_without_annotations": 0}

    images: dict[int, VideoRecord] = {}
    for i, im in enumerate(data.get("images") or []):
        where = f"{source}: images[{i}]"
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
            raise DataFormatError(f"{where}: needs 'id', 'file_name', 'height', 'width'")
        iid = _int(im["id"], f"{where}.id")
        if iid in images:
            log.report(Problem("duplicate_id", f"{source}: image id {iid} appears twice", video_id=iid))
            continue
        images[iid] = VideoRecord(iid, _int(im["height"], f"{where}.height"), _int(im["width"], f"{where}.width"), 1,
                                  [str(im["file_name"])], [])

    seen: set[int] = set()
    for i, a in enumerate(data.get("annotations") or []):
        where = f"{source}: annotations[{i}]"
        if not isinstance(a, dict):
            raise DataFormatError(f"{where}: expected an object")
        aid = _int(a.get("id", i), f"{where}.id")
        iid = _int(a.get("image_id"), f"{where}.image_id")
        cid = _int(a.get("category_id"), f"{where}.category_id")
        if aid in seen:
            log.report(Problem("duplicate_id", f"{source}: annotation id {aid} appears twice", annotation_id=aid))
            continue
        seen.add(aid)
        image = images.get(iid)
        if image is None:
            log.report(Problem("unknown_video", f"{source}: annotation {aid} refers to unknown image id {iid}",
                               video_id=iid, annotation_id=aid))
            continue
        if cid not in json_ids:
            log.report(Problem("unknown_category", f"{source}: annotation {aid} (image {iid}) has unknown category id {cid}",
                               video_id=iid, annotation_id=aid))
            continue
        if cmap is not None:
            if cid not in cmap:
                notes["annotations_of_unmapped_categories"] += 1
                continue
            target = int(cmap[cid])
        else:
            target = cid
        if target not in target_ids:
            log.report(Problem("unknown_category",
                               f"{source}: annotation {aid} (image {iid}): category {target} is not in the target table",
                               video_id=iid, annotation_id=aid))
            continue
        segm = a.get("segmentation")
        image.instances.append(InstanceRecord(aid, target, cid, bool(a.get("iscrowd", 0)), [segm],
                                              [a.get("area")], [a.get("bbox")], None))

    ordered = []
    for k in sorted(images):
        if images[k].instances:
            images[k].instances.sort(key=lambda inst: inst.annotation_id)
            ordered.append(images[k])
        else:
            # as CTVIS's coco2ytvis conversion: images without a (mapped) annotation are not used
            notes["images_without_annotations"] += 1
    return ParsedSplit("coco", tuple(categories), ordered, log.problems, notes)


# --------------------------------------------------------------------------------------------
def segmentation_to_rle(segm: Any, height: int, width: int) -> Optional[bytes]:
    """One frame's segmentation as compressed RLE counts (bytes), or None where absent.

    Accepts compressed RLE (``counts`` str/bytes), uncompressed RLE (``counts`` list of ints),
    polygons (a list of flat coordinate lists; invalid ones with < 3 points are dropped as
    detectron2 does) and null. Raises ValueError for anything else, or an RLE of another size.
    """
    from pycocotools import mask as mask_util

    if segm is None:
        return None
    if isinstance(segm, dict):
        size = segm.get("size")
        counts = segm.get("counts")
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"RLE without a valid 'size': {str(segm)[:80]}")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the frame size [{height}, {width}]")
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not {height}*{width}")
            rle = mask_util.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
            return bytes(rle["counts"])
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if isinstance(counts, bytes):
            # decode once to validate it (a corrupt string would crash later, far from its source)
            decoded = mask_util.decode({"size": [height, width], "counts": counts})
            if decoded.shape != (height, width):
                raise ValueError("compressed RLE does not decode to the frame size")
            return counts
        raise ValueError(f"RLE 'counts' must be a string or a list of ints, got {type(counts).__name__}")
    if isinstance(segm, list):
        polygons = [p for p in segm if isinstance(p, (list, tuple)) and len(p) % 2 == 0 and len(p) >= 6]
        if not polygons:
            return None
        rles = mask_util.frPyObjects([[float(x) for x in p] for p in polygons], height, width)
        return bytes(mask_util.merge(rles)["counts"])
    raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")


def rle_area_bbox(counts: bytes, height: int, width: int) -> tuple[float, list[float]]:
    from pycocotools import mask as mask_util

    rle = {"size": [height, width], "counts": counts}
    return float(mask_util.area(rle)), [float(x) for x in mask_util.toBbox(rle)]
