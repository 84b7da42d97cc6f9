"""A model over one user video, online and in bounded memory: what `ctvis infer` and the MLflow
pyfunc model run.

Frames are decoded one by one (`user_video`), resized as the test mapper does (shortest edge
``data.min_size_test``, longer edge at most ``--max-size`` or ``data.max_size_test``), and run
through the network ``num_clip_frames`` at a time; the tracker and the post-processing run online
(`models.video_inference.OnlineVideoInference`). Each frame, once the tracker has settled it, is
written at once: its masks as RLE (at the original size) to a spill file, and its overlay frame to
the mp4. Only a bounded number of frames (the unsettled ones and the clip being filled) is ever in
memory. At the end the video's top-k instances are chosen (the released post-processing) and their
per-frame RLEs are read back from the spill file into ``tracks.json``.

``tracks.json`` is the YouTube-VIS results format (``video_id``, ``category_id``, ``score``,
``segmentations``: one RLE per processed frame, at the original size) with ``track_id`` and
``category_name`` added; instances below ``score_thr`` are left out (0 keeps the benchmark's top-k).
The overlay shows each track with its class and score so far (the online view; the final scores are
in ``tracks.json``) where that score is at least ``score_thr``.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

import numpy as np

from pipelines.inference.user_video import DecodedFrame, FrameProblem, UserVideo, UserVideoError

if TYPE_CHECKING:
    from models.video_inference import OnlineFrame

CLASSES_FILE = "classes.json"  # beside the weights: [{"id": 1, "name": "person"}, ...] in label order


@dataclasses.dataclass(frozen=True)
class InferOptions:
    score_thr: float = 0.3
    max_size: Optional[int] = None  # the longer edge at test time (default: the model's data.max_size_test)
    every: int = 1  # process every N-th decoded frame
    on_error: Literal["fail", "skip"] = "fail"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, got {self.every}")
        if not 0.0 <= self.score_thr <= 1.0:
            raise ValueError(f"--score-thr must be in [0, 1], got {self.score_thr}")
        if self.max_size is not None and self.max_size < 32:
            raise ValueError(f"--max-size must be >= 32, got {self.max_size}")


@dataclasses.dataclass
class LoadedModel:
    """A CTVIS model ready for inference: eval mode on `device`, its experiment (test sizes) and its
    class table (contiguous label -> (category id, name))."""

    model: Any
    experiment: Any
    category_ids: list[int]
    category_names: list[str]
    description: str
    device: Any


@dataclasses.dataclass
class InferResult:
    tracks: list[dict]  # tracks.json entries, in score order
    video: str
    frame_indices: list[int]  # the decoded frame index of each processed frame
    skipped: list[FrameProblem]
    size: tuple[int, int]  # (H, W) original
    test_size: tuple[int, int]  # (h, w) the network saw
    fps: float  # of the source; the overlay runs at fps / every
    seconds: float
    presence: dict[int, tuple[int, int, int]]  # track_id -> (frames present, first, last) in processed frames

    @property
    def frames_per_s(self) -> float:
        return len(self.frame_indices) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"video": self.video, "frames_processed": len(self.frame_indices),
                "frames_skipped": [{"index": p.index, "reason": p.reason} for p in self.skipped],
                "size": list(self.size), "test_size": list(self.test_size), "fps": self.fps,
                "seconds": round(self.seconds, 3), "frames_per_s": round(self.frames_per_s, 3),
                "tracks": [{"track_id": t["track_id"], "category_name": t["category_name"],
                            "category_id": t["category_id"], "score": round(t["score"], 4),
                            "frames_present": self.presence.get(t["track_id"], (0, -1, -1))[0],
                            "first_frame": self.presence.get(t["track_id"], (0, -1, -1))[1],
                            "last_frame": self.presence.get(t["track_id"], (0, -1, -1))[2]} for t in self.tracks]}


def model_categories(experiment: Any, classes_file: Optional[Path], num_classes: int) -> tuple[list[int], list[str]]:
    """The model's class table: ``classes.json`` beside its weights, else the category table of its
    first training split (ingested shards' manifest, or the catalog), else ``class_<i>``."""
    from pipelines.data.catalog import Category, contiguous_index, split_categories

    categories = None
    if classes_file is not None and classes_file.is_file():
        categories = tuple(Category(int(c["id"]), str(c["name"])) for c in json.loads(classes_file.read_text()))
    if categories is None:
        spec = experiment.data.train[0]
        if spec.shards:
            try:
                from pipelines.data.shards import load_manifest

                categories = load_manifest(spec.shards).categories
            except Exception:  # noqa: BLE001 - only a source of names; the catalog or numbers follow
                categories = None
        if categories is None:
            categories = split_categories(spec.name)
    if categories is None or len(categories) != num_classes:
        return list(range(1, num_classes + 1)), [f"class_{i}" for i in range(1, num_classes + 1)]
    index = contiguous_index(categories)
    names = {c.id: c.name for c in categories}
    ids = [cid for cid, _ in sorted(index.items(), key=lambda item: item[1])]
    return ids, [names[c] for c in ids]


def pick_device(device: Optional[str]):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return torch.device(device)


def load_model(model: str, overrides: Sequence[str] = (), tracking_uri: Optional[str] = None,
               device: Optional[str] = None) -> LoadedModel:
    """MODEL as `ctvis predict` takes it (registry URI, experiment YAML + model.weights, checkpoint
    directory), built, loaded and put in eval mode on `device` (default: CUDA when present)."""
    from pipelines.inference.model_source import resolve_model

    resolved = resolve_model(model, overrides, tracking_uri)
    return _build(resolved.experiment, resolved.weights, device, resolved.description)


def load_model_files(weights: str, config: str, classes: Optional[str], device: Optional[str] = None) -> LoadedModel:
    """A model from its files (a registered version's artifacts, as the pyfunc model gets them)."""
    from pipelines.config import build_experiment, parse_yaml
    from pipelines.weights import WeightsSource

    experiment = build_experiment(parse_yaml(Path(config).read_text(), config), config, [])
    return _build(experiment, WeightsSource(weights, weights), device, weights,
                  Path(classes) if classes else None)


def _build(experiment: Any, weights: Any, device: Optional[str], description: str,
           classes_file: Optional[Path] = None) -> LoadedModel:
    from models.model import build_model
    from pipelines.weights import WeightsSource, fetch, load_weights

    target = pick_device(device)
    network = build_model(experiment.model)
    with tempfile.TemporaryDirectory() as tmp:
        local = fetch(weights, tmp)
        load_weights(network, WeightsSource(weights.uri, str(local)))
        ids, names = model_categories(experiment, classes_file or local.parent / CLASSES_FILE,
                                      experiment.model.network.num_classes)
    return LoadedModel(network.to(target).eval(), experiment, ids, names, description, target)


def _encode(masks: np.ndarray) -> list[str]:
    """bool (n, H, W) -> compressed RLE counts strings."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [rle["counts"].decode("ascii") for rle in encoded]


class _FrameSink:
    """Where settled frames go: RLEs to the spill file, overlay frames to the writer, presence counts."""

    def __init__(self, loaded: LoadedModel, spill, size: tuple[int, int], score_thr: float,
                 overlay: Any, pending: dict[int, np.ndarray]):
        self.loaded, self.spill, self.size, self.score_thr = loaded, spill, size, score_thr
        self.overlay, self.pending = overlay, pending
        self.presence: dict[int, list[int]] = {}  # entry -> [count, first, last]
        self.track_of_entry: dict[int, int] = {}

    def put(self, frame: OnlineFrame) -> None:
        from pipelines.inference.overlay import draw_overlay

        masks = frame.dense_masks().numpy()                                                # (n, H, W)
        present = np.zeros(frame.entries.size, dtype=bool)
        present[frame.windows.index] = True
        rows = np.flatnonzero(present)
        counts = _encode(masks[rows])
        self.spill.write(json.dumps([frame.frame_index, {str(int(frame.entries[r])): c
                                                         for r, c in zip(rows.tolist(), counts)}]) + "\n")
        for r in rows.tolist():
            entry = int(frame.entries[r])
            self.track_of_entry[entry] = int(frame.track_ids[r])
            stats = self.presence.setdefault(entry, [0, frame.frame_index, frame.frame_index])
            stats[0] += 1
            stats[2] = frame.frame_index
        image = self.pending.pop(frame.frame_index, None)
        if self.overlay is not None:
            shown = [r for r in rows.tolist() if frame.scores[r] >= self.score_thr]
            captions = [f"{int(frame.track_ids[r])} {self.loaded.category_names[int(frame.labels[r])]} "
                        f"{float(frame.scores[r]):.2f}" for r in shown]
            self.overlay.write(draw_overlay(image, masks[shown], [int(frame.track_ids[r]) for r in shown], captions))


def run_online(loaded: LoadedModel, video: UserVideo, options: InferOptions, work_dir: Path,
               overlay_path: Optional[Path] = None, log: Callable[[str], None] = lambda line: None) -> InferResult:
    """Run `loaded` over `video` (see the module notes). Spill files go to `work_dir`; the overlay
    mp4 to `overlay_path` when given. Raises `UserVideoError` on a bad frame under on_error=fail."""
    import torch

    from pipelines.data.augment import shortest_edge_size
    from pipelines.inference.overlay import Mp4Writer
    from pipelines.inference.videos import resize_test_frame

    from tqdm import tqdm

    model, experiment = loaded.model, loaded.experiment
    clip_frames = model.config.inference.num_clip_frames
    max_size = options.max_size or experiment.data.max_size_test
    started = time.perf_counter()
    skipped: list[FrameProblem] = []
    frame_indices: list[int] = []
    pending: dict[int, np.ndarray] = {}  # processed frame -> its original image, until the frame is settled
    clip: list[np.ndarray] = []
    online = sink = writer = None
    size = test_size = (0, 0)
    spill_path = work_dir / "masks.spill.jsonl"
    bar = (tqdm(total=video.num_frames, unit="frame", desc=Path(video.name).name[:30], disable=None, mininterval=0.5)
           if options.progress else None)

    def flush_clip() -> None:
        batch = torch.from_numpy(np.stack(clip)).to(loaded.device)
        clip.clear()
        with torch.no_grad():
            for frame in online.step_clip(model.network_outputs(batch)):
                sink.put(frame)

    try:
        with open(spill_path, "w") as spill:
            for decoded in video.frames():
                if bar is not None:
                    bar.update(1)
                if decoded.index % options.every:
                    continue
                problem = decoded.problem or _size_problem(decoded, size)
                if problem is not None:
                    if options.on_error == "fail":
                        raise UserVideoError(f"{video.name}: frame {problem.index}: {problem.reason}")
                    skipped.append(problem)
                    log(f"skipped frame {problem.index}: {problem.reason}")
                    continue
                if online is None:
                    size = decoded.image.shape[:2]
                    test_size = shortest_edge_size(size[0], size[1], experiment.data.min_size_test, max_size)
                    online = model.online_inference(test_size, size)
                    if overlay_path is not None:
                        writer = Mp4Writer(overlay_path, video.fps / options.every, *size)
                    sink = _FrameSink(loaded, spill, size, options.score_thr, writer, pending)
                position = len(frame_indices)
                frame_indices.append(decoded.index)
                if writer is not None:
                    pending[position] = decoded.image
                clip.append(resize_test_frame(decoded.image, test_size))
                if len(clip) == clip_frames:
                    flush_clip()
            if online is None:
                what = f"all {len(skipped)} frames failed to decode" if skipped else "no frames"
                raise UserVideoError(f"{video.name}: {what}")
            if clip:
                flush_clip()
            rest, result = online.finish()
            for frame in rest:
                sink.put(frame)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    tracks = _tracks(result, sink, spill_path, loaded, options.score_thr, size, len(frame_indices))
    presence = {sink.track_of_entry[e]: tuple(v) for e, v in sink.presence.items() if e in sink.track_of_entry}
    return InferResult(tracks, video.name, frame_indices, skipped, tuple(size), tuple(test_size), float(video.fps),
                       time.perf_counter() - started, presence)


def _size_problem(decoded: DecodedFrame, size: tuple[int, int]) -> Optional[FrameProblem]:
    if size != (0, 0) and decoded.image.shape[:2] != tuple(size):
        return FrameProblem(decoded.index, f"the frame is {decoded.image.shape[0]}x{decoded.image.shape[1]}, "
                                           f"the video {size[0]}x{size[1]}")
    return None


def _tracks(result: Any, sink: _FrameSink, spill_path: Path, loaded: LoadedModel, score_thr: float,
            size: tuple[int, int], num_frames: int) -> list[dict]:
    """tracks.json entries of the kept top-k instances, their RLEs read back from the spill file."""
    keep = [i for i, score in enumerate(result.scores.tolist()) if score >= score_thr]
    wanted = {str(int(result.entries[i])) for i in keep}
    empty = _encode(np.zeros((1, *size), dtype=bool))[0]
    segmentations = {entry: [empty] * num_frames for entry in wanted}
    with open(spill_path) as spill:
        for line in spill:
            frame, counts = json.loads(line)
            for entry in wanted.intersection(counts):
                segmentations[entry][frame] = counts[entry]
    height, width = (int(v) for v in size)
    tracks = []
    for i in keep:
        entry, label = str(int(result.entries[i])), int(result.labels[i])
        tracks.append({"video_id": 1, "track_id": int(result.track_ids[i]),
                       "category_id": int(loaded.category_ids[label]), "category_name": loaded.category_names[label],
                       "score": float(result.scores[i]),
                       "segmentations": [{"size": [height, width], "counts": c} for c in segmentations[entry]]})
    return tracks


class ArrayVideo(UserVideo):
    """Frames already in memory, uint8 (T, H, W, 3) RGB (the pyfunc model's input)."""

    def __init__(self, frames: np.ndarray, fps: float = 6.0, name: str = "frames"):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UserVideoError(f"{name}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        from fractions import Fraction

        super().__init__(name, Fraction(fps).limit_denominator(1001), int(frames.shape[0]))
        self._frames = frames

    def frames(self):
        for index, image in enumerate(self._frames):
            yield DecodedFrame(index, np.ascontiguousarray(image))
