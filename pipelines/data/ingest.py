"""Ingest a raw split (JSON + frames, local or s3://) into Parquet shards on storage.

The driver reads and checks the annotation JSON, plans the shards (consecutive videos up to a
target size), and runs one task per shard on Ray (or in-process with ``executor="local"``). A task
fetches the frames (threads: I/O bound), decodes each one to check it, converts every
segmentation to compressed RLE, writes its Parquet shard and then a small progress marker. A
re-run skips the shards whose marker matches the current plan (same JSON checksum, frames root,
policy and video grouping), so an interrupted ingest resumes where it stopped. The manifest is
written last.

Problems (a missing frame file, a corrupt JPEG, a frame of the wrong size, a segmentation count
that differs from the video length, an unknown video or category id, an undecodable segmentation)
either stop the ingest with a `DataFormatError` naming the file / video / annotation / frame
(``on_error="fail"``), or are skipped and listed in the manifest with their counts
(``on_error="skip"``: a bad frame skips its video, a bad annotation skips that instance).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal, Mapping, Optional

from pipelines import storage
from pipelines.data import shards as shards_mod
from pipelines.data.catalog import SplitInfo
from pipelines.data.formats import (
    DataFormatError,
    ErrorPolicy,
    Problem,
    ProblemLog,
    VideoRecord,
    parse_split,
    rle_area_bbox,
    segmentation_to_rle,
)

logger = logging.getLogger(__name__)

PROGRESS_DIR = "_progress"


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    on_error: ErrorPolicy = "fail"
    shard_mb: float = 128.0  # target shard size (estimated from a sample of frame file sizes)
    max_videos_per_shard: int = 1000
    executor: Literal["ray", "local"] = "ray"
    max_in_flight: int = 8  # shard tasks submitted at once
    cpus_per_task: float = 1.0
    io_threads: int = 8  # frame fetches in flight per task
    verify_frames: bool = True  # decode every frame once (finds corrupt JPEGs)
    # Environment variables for the Ray tasks (e.g. the driver's AWS_* variables where the cluster's
    # workers lack the driver's AWS_* settings). They travel in the task's runtime_env, so prefer
    # cluster-side credentials (instance roles, node env) in production.
    worker_env: Optional[Mapping[str, str]] = None


@dataclasses.dataclass
class ShardJob:
    index: int
    split: str
    output: str
    frames_root: str
    policy: ErrorPolicy
    plan_key: str
    videos: list[VideoRecord]
    io_threads: int
    verify_frames: bool
    annotations: str = ""  # the split's JSON (credentials redacted), for problem messages

    @property
    def path(self) -> str:
        return f"part-{self.index:05d}.parquet"

    @property
    def marker_uri(self) -> str:
        return storage.join(self.output, PROGRESS_DIR, f"part-{self.index:05d}.json")


# --------------------------------------------------------------------------------------------
def _check_frame(data: bytes, uri: str, video: VideoRecord, t: int, verify: bool) -> Optional[Problem]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            if verify:
                im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder error means a corrupt file
        return Problem("corrupt_frame", f"{storage.redact(uri)}: video {video.video_id} frame {t}: cannot decode the image "
                       f"({type(exc).__name__}: {exc})", video.video_id, None, t, storage.redact(uri))
    if size != (video.width, video.height):
        return Problem("frame_size_mismatch", f"{storage.redact(uri)}: video {video.video_id} frame {t}: image is "
                       f"{size[0]}x{size[1]} (WxH) but the JSON says {video.width}x{video.height}",
                       video.video_id, None, t, storage.redact(uri))
    return None


def _fetch(uri: str) -> bytes | Exception:
    try:
        return storage.read_bytes(uri)
    except Exception as exc:  # noqa: BLE001 - classified by the caller
        return exc


def build_shard(job: ShardJob) -> dict[str, Any]:
    """Fetch, check and convert the videos of one shard, write it and its progress marker."""
    log = ProblemLog(job.policy)
    notes = {"frames_with_invalid_polygons": 0}
    uris = [[storage.join(job.frames_root, fn) for fn in v.file_names] for v in job.videos]
    flat = [u for us in uris for u in us]
    with ThreadPoolExecutor(max_workers=max(1, job.io_threads)) as pool:
        fetched = iter(list(pool.map(_fetch, flat)))
        per_video = [[next(fetched) for _ in us] for us in uris]

        def check(args):
            video, t, data, uri = args
            return _check_frame(data, uri, video, t, job.verify_frames)

        rows, index = [], {"video_id": [], "row": [], "length": []}
        num_frames = num_instances = 0
        for video, video_uris, frames in zip(job.videos, uris, per_video):
            bad = False
            to_check = []
            for t, (uri, data) in enumerate(zip(video_uris, frames)):
                if isinstance(data, Exception):
                    if storage.is_remote(uri) and not isinstance(data, FileNotFoundError):
                        # The object store failed after its retries (storage.RetryPolicy): an outage,
                        # not a property of the data. Skipping the video would drop it silently.
                        raise data
                    bad = True
                    kind = "missing_frame" if isinstance(data, FileNotFoundError) else "unreadable_frame"
                    what = "frame file not found" if kind == "missing_frame" else f"cannot read the frame file ({data})"
                    log.report(Problem(kind, f"{storage.redact(uri)}: video {video.video_id} frame {t}: {what}",
                                       video.video_id, None, t, storage.redact(uri)))
                else:
                    to_check.append((video, t, data, uri))
            for problem in pool.map(check, to_check):
                if problem is not None:
                    bad = True
                    log.report(problem)
            if bad:
                continue  # skip policy: the whole video (its frames are not all there)
            row = _video_row(video, frames, log, notes, job.annotations)
            if row is None:
                continue
            index["video_id"].append(video.video_id)
            index["row"].append(len(rows))
            index["length"].append(video.length)
            rows.append(row)
            num_frames += video.length
            num_instances += len(row["instance_ids"])

    payload = shards_mod.encode_table(rows)
    digest = hashlib.sha256(payload).hexdigest()
    storage.write_bytes(storage.join(job.output, job.path), payload)
    summary = {
        "index": job.index,
        "path": job.path,
        "sha256": digest,
        "bytes": len(payload),
        "num_videos": len(rows),
        "num_frames": num_frames,
        "num_instances": num_instances,
        "video_index": index,
        "problems": [p.as_dict() for p in log.problems],
        "notes": notes,
        "plan_key": job.plan_key,
    }
    storage.write_json(job.marker_uri, summary)
    return summary


def _video_row(video: VideoRecord, frames: list[bytes], log: ProblemLog, notes: dict, source: str) -> Optional[dict]:
    """`source`: the annotation file (credentials redacted), named in problem messages."""
    h, w = video.height, video.width
    instance_ids, category_ids, source_ids, crowd, segms, areas, bboxes, occl = [], [], [], [], [], [], [], []
    any_occlusion = False
    for inst in video.instances:
        rles, invalid = [], None
        for t, segmentation in enumerate(inst.segmentations):
            try:
                rles.append(segmentation_to_rle(segmentation, h, w))
            except (ValueError, TypeError) as exc:
                invalid = (t, exc)
                break
        if invalid is not None:
            t, exc = invalid
            log.report(Problem("invalid_segmentation", f"{source}: video {video.video_id} annotation "
                               f"{inst.annotation_id} frame {t}: invalid segmentation ({exc})", video.video_id,
                               inst.annotation_id, t))
            continue
        inst_areas, inst_boxes = [], []
        for t, (raw, rle) in enumerate(zip(inst.segmentations, rles)):
            if rle is None:
                if raw is not None and isinstance(raw, list) and raw:
                    notes["frames_with_invalid_polygons"] += 1
                inst_areas.append(None)
                inst_boxes.append(None)
                continue
            area, box = inst.areas[t], inst.bboxes[t]
            if box is not None and not _plausible_box(box, h, w):
                log.report(Problem("invalid_bbox", f"{source}: video {video.video_id} annotation {inst.annotation_id} frame {t}: "
                                   f"bbox {box} is not [x, y, width, height] inside the {w}x{h} frame (skip policy: "
                                   f"replaced by the mask's box)", video.video_id, inst.annotation_id, t))
                box = None
            if area is None or box is None:
                computed_area, computed_box = rle_area_bbox(rle, h, w)
                area = computed_area if area is None else area
                box = computed_box if box is None else box
            inst_areas.append(float(area))
            inst_boxes.append([float(x) for x in box])
        instance_ids.append(inst.annotation_id)
        category_ids.append(inst.category_id)
        source_ids.append(inst.source_category_id)
        crowd.append(inst.iscrowd)
        segms.append(rles)
        areas.append(inst_areas)
        bboxes.append(inst_boxes)
        occl.append(inst.occlusion)
        any_occlusion = any_occlusion or inst.occlusion is not None
    return {
        "video_id": video.video_id, "height": h, "width": w, "length": video.length,
        "file_names": video.file_names, "frames": frames,
        "instance_ids": instance_ids, "category_ids": category_ids, "source_category_ids": source_ids,
        "iscrowd": crowd, "segmentations": segms, "areas": areas, "bboxes": bboxes,
        "occlusion": occl if any_occlusion else None,
    }


_BOX_SLACK = 1.0  # pixels: polygon boxes may reach a pixel past the border


def _plausible_box(box: Any, height: int, width: int) -> bool:
    """[x, y, w, h]: four finite numbers, w and h >= 0, inside the frame (with a pixel of slack)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        return False
    x, y, bw, bh = box
    return (bw >= 0 and bh >= 0 and x >= -_BOX_SLACK and y >= -_BOX_SLACK
            and x + bw <= width + _BOX_SLACK and y + bh <= height + _BOX_SLACK)


# --------------------------------------------------------------------------------------------
def _estimate_frame_bytes(info: SplitInfo, videos: list[VideoRecord], samples: int = 8) -> float:
    picks = [videos[int(i * len(videos) / samples)] for i in range(min(samples, len(videos)))]
    sizes = []
    for v in picks:
        try:
            sizes.append(storage.size(storage.join(info.frames_root, v.file_names[0])))
        except Exception:  # noqa: BLE001 - the shard task reports missing files properly
            continue
    return float(sum(sizes) / len(sizes)) if sizes else 100_000.0


def plan_shards(videos: list[VideoRecord], frames_per_shard: int, max_videos: int) -> list[list[VideoRecord]]:
    """Consecutive videos, each shard up to `frames_per_shard` frames (at least one video)."""
    groups: list[list[VideoRecord]] = []
    current: list[VideoRecord] = []
    frames = 0
    for v in videos:
        if current and (frames + v.length > frames_per_shard or len(current) >= max_videos):
            groups.append(current)
            current, frames = [], 0
        current.append(v)
        frames += v.length
    if current:
        groups.append(current)
    return groups


def ingest(info: SplitInfo, output: str, options: IngestOptions = IngestOptions(),
           log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Ingest the split `info` into shards under `output`; returns the manifest (also written there).
    `log` gets a progress line per finished shard (shards, videos, frames, elapsed, ETA)."""
    raw = storage.read_bytes(info.annotations)
    source_sha = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{storage.redact(info.annotations)}: not valid JSON: {exc}") from None
    parsed = parse_split(info, data, options.on_error)

    frame_bytes = _estimate_frame_bytes(info, parsed.videos) if parsed.videos else 1.0
    frames_per_shard = max(1, int(options.shard_mb * 2**20 / frame_bytes))
    groups = plan_shards(parsed.videos, frames_per_shard, options.max_videos_per_shard)
    plan_key = hashlib.sha256(json.dumps({
        "version": shards_mod.FORMAT_VERSION, "split": info.name, "annotations_sha256": source_sha,
        "frames_root": info.frames_root, "on_error": options.on_error,
        "shards": [[v.video_id for v in g] for g in groups],
    }).encode()).hexdigest()

    jobs = [ShardJob(i, info.name, output, info.frames_root, options.on_error, plan_key, g, options.io_threads,
                     options.verify_frames, storage.redact(info.annotations)) for i, g in enumerate(groups)]
    summaries: dict[int, dict] = {}
    todo = []
    for job in jobs:
        done = _finished(job)
        if done is not None:
            summaries[job.index] = done
        else:
            todo.append(job)
    resumed = len(summaries)
    logger.info("ingest %s: %d shards (%d already done)", info.name, len(jobs), resumed)
    started = time.monotonic()
    for done, summary in enumerate(_run(todo, options), start=1):
        summaries[summary["index"]] = summary
        if log is not None:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(todo) - done)
            log(f"ingest {info.name}: shard {len(summaries)}/{len(jobs)} ({summary['num_videos']} videos, "
                f"{summary['num_frames']} frames), {elapsed:.0f} s, ETA {eta:.0f} s")

    ordered = [summaries[i] for i in range(len(jobs))]
    problems = [p.as_dict() for p in parsed.problems] + [p for s in ordered for p in s["problems"]]
    counts: dict[str, int] = {}
    for p in problems:
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    notes = dict(parsed.notes)
    for s in ordered:
        for k, v in s["notes"].items():
            notes[k] = notes.get(k, 0) + v
    video_index = {"video_id": [], "shard": [], "row": [], "length": []}
    for s in ordered:
        n = len(s["video_index"]["video_id"])
        video_index["video_id"].extend(s["video_index"]["video_id"])
        video_index["shard"].extend([s["index"]] * n)
        video_index["row"].extend(s["video_index"]["row"])
        video_index["length"].extend(s["video_index"]["length"])
    manifest = {
        "format_version": shards_mod.FORMAT_VERSION,
        "split": info.name,
        "kind": "video" if parsed.format == "ytvis" else "image",
        "source": {"annotations": storage.redact(info.annotations), "annotations_sha256": source_sha,
                   "frames_root": storage.redact(info.frames_root), "format": parsed.format,
                   "category_map": {str(k): v for k, v in info.category_map.items()} if info.category_map else None},
        "categories": [{"id": c.id, "name": c.name} for c in parsed.categories],
        "on_error": options.on_error,
        "plan_key": plan_key,
        "num_videos": sum(s["num_videos"] for s in ordered),
        "num_frames": sum(s["num_frames"] for s in ordered),
        "num_instances": sum(s["num_instances"] for s in ordered),
        "num_shards": len(ordered),
        "shards": [{k: s[k] for k in ("path", "sha256", "bytes", "num_videos", "num_frames", "num_instances")} for s in ordered],
        "problem_counts": counts,
        "problems": problems,
        "notes": notes,
        "video_index": video_index,
    }
    storage.write_json(storage.join(output, shards_mod.MANIFEST_NAME), manifest)
    _remove_stale_shards(output, {job.path for job in jobs})
    # What a re-run reused is reported, not written: an interrupted ingest run again leaves the same
    # files, byte for byte, as one that was never interrupted.
    return {**manifest, "resumed_shards": resumed}


def _remove_stale_shards(output: str, current: set[str]) -> None:
    """Shards (and their progress markers) of an earlier ingest into `output` that this plan did not
    write (e.g. another --shard-mb): a reader of the directory must see only the manifest's shards."""
    try:
        entries = storage.ls(output)
    except storage.StorageNotFound:
        return
    storage.remove_partial_writes(output)
    storage.remove_partial_writes(storage.join(output, PROGRESS_DIR))
    for uri in entries:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".parquet") and name not in current:
            storage.remove(uri)
            marker = storage.join(output, PROGRESS_DIR, name[: -len(".parquet")] + ".json")
            if storage.exists(marker):
                storage.remove(marker)


def _finished(job: ShardJob) -> Optional[dict]:
    try:
        marker = storage.read_json(job.marker_uri)
    except storage.StorageNotFound:
        return None
    if marker.get("plan_key") != job.plan_key or not storage.exists(storage.join(job.output, job.path)):
        return None
    return marker


def _run(jobs: list[ShardJob], options: IngestOptions):
    if not jobs:
        return
    if options.executor == "local":
        for job in jobs:
            yield build_shard(job)
        return
    if options.executor != "ray":
        raise ValueError(f"executor: expected 'ray' or 'local', got {options.executor!r}")
    import ray

    from pipelines.ray_runtime import connect, runtime_env_vars

    extra = {"runtime_env": runtime_env_vars(options.worker_env)} if options.worker_env else {}  # before any Ray starts
    connect()  # the cluster already connected to, RAY_ADDRESS, or a local Ray on 127.0.0.1
    remote = ray.remote(build_shard).options(num_cpus=options.cpus_per_task, max_retries=2,
                                             retry_exceptions=[OSError], **extra)
    pending = list(jobs)
    in_flight: list = []
    try:
        while pending or in_flight:
            while pending and len(in_flight) < max(1, options.max_in_flight):
                in_flight.append(remote.remote(pending.pop(0)))
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            yield _unwrap(ray, ready[0])
    finally:
        for ref in in_flight:
            ray.cancel(ref)


def _unwrap(ray, ref) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DataFormatError):
            raise DataFormatError(str(cause)) from None
        raise
