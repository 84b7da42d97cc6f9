"""Synthetic video instance segmentation datasets in the published YouTube-VIS (or COCO) format.

Textured shapes of a few classes move on smooth paths over a textured background: they occlude
one another (masks are the visible parts, as in YouTube-VIS), enter late, leave early or slide out
of the frame, and several instances of one class can be on screen at once. Each class has its own
shape, colour and texture, so a tiny model learns them in minutes on a CPU. Everything is a pure
function of the config (seed included): the same config writes byte-identical JSON and frames.

Layout written under the output URI (local path or s3://):
  ytvis: ``annotations.json`` + ``JPEGImages/<video>/<frame:05d>.jpg``
  coco:  ``annotations.json`` + ``images/<image id:06d>.jpg`` (one rendered frame per image)
"""
from __future__ import annotations

import dataclasses
import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import numpy as np

from pipelines import storage

# name, shape, RGB colour, texture
CLASS_STYLES: tuple[tuple[str, str, tuple[int, int, int], str], ...] = (
    ("red_disc", "disc", (220, 40, 40), "stripes"),
    ("green_square", "square", (40, 190, 60), "checker"),
    ("blue_triangle", "triangle", (50, 80, 230), "dots"),
    ("yellow_diamond", "diamond", (235, 215, 40), "plain"),
    ("magenta_ring", "ring", (210, 50, 210), "stripes"),
    ("cyan_cross", "cross", (40, 210, 220), "checker"),
    ("orange_ellipse", "ellipse", (245, 140, 30), "dots"),
    ("white_hexagon", "hexagon", (240, 240, 240), "stripes"),
)
MAX_CLASSES = len(CLASS_STYLES)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    format: Literal["ytvis", "coco"] = "ytvis"
    num_videos: int = 8  # images, for the coco format
    min_frames: int = 8
    max_frames: int = 16
    height: int = 96
    width: int = 128
    num_classes: int = 3
    min_instances: int = 1
    max_instances: int = 4
    seed: int = 0
    jpeg_quality: int = 90
    start_video_id: int = 1

    def __post_init__(self):
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes: must be in [1, {MAX_CLASSES}], got {self.num_classes}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"min_frames/max_frames: need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError("min_instances/max_instances: need 1 <= min_instances <= max_instances")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height/width: at least 16 pixels, got {self.height}x{self.width}")
        if self.num_videos < 1:
            raise ValueError("num_videos: at least 1")


def categories(num_classes: int) -> list[dict]:
    return [{"id": i + 1, "name": CLASS_STYLES[i][0], "supercategory": "shape"} for i in range(num_classes)]


# --------------------------------------------------------------------------------------------
def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside test of a shape of radius r in its own rotated coordinates (dx, dy)."""
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        # equilateral, pointing up: three half-planes
        return (dy <= 0.5 * r) & (np.sqrt(3) * dx - dy <= r) & (-np.sqrt(3) * dx - dy <= r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if shape == "cross":
        a = 0.35 * r
        return ((np.abs(dx) <= a) & (np.abs(dy) <= r)) | ((np.abs(dy) <= a) & (np.abs(dx) <= r))
    if shape == "ellipse":
        return (dx / r) ** 2 + (dy / (0.55 * r)) ** 2 <= 1.0
    if shape == "hexagon":
        return np.maximum(np.abs(dx) * 0.866 + np.abs(dy) * 0.5, np.abs(dy)) <= 0.9 * r
    raise ValueError(f"unknown shape {shape}")


def _texture(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Brightness factor in [0.55, 1.0] in the object's own coordinates (moves with it)."""
    period = max(3.0, r / 2.5)
    if kind == "stripes":
        return 0.775 + 0.225 * np.sign(np.sin((dx + dy) * (np.pi / period)))
    if kind == "checker":
        return np.where(((np.floor(dx / period) + np.floor(dy / period)) % 2) == 0, 1.0, 0.6)
    if kind == "dots":
        fx = (dx / period) % 1.0 - 0.5
        fy = (dy / period) % 1.0 - 0.5
        return np.where(fx * fx + fy * fy < 0.09, 0.55, 1.0)
    return 0.85 + 0.15 * (dy / max(r, 1.0))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-saturation textured background (float32 HxWx3 in [0, 255])."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(70, 150)
    tint = rng.uniform(-12, 12, size=3)
    gx, gy = rng.uniform(-40, 40, size=2)
    img = base + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    for _ in range(3):
        fx, fy = rng.uniform(0.02, 0.15, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        img = img + rng.uniform(4, 12) * np.sin(fx * xx + fy * yy + phase)
    noise = rng.normal(0, 4, size=(h, w)).astype(np.float32)
    out = (img + noise)[..., None] + tint[None, None, :]
    return out.astype(np.float32)


@dataclasses.dataclass
class _Track:
    class_index: int
    radius: float
    start: np.ndarray  # (2,) x, y at frame 0
    velocity: np.ndarray  # (2,) pixels / frame
    wobble: np.ndarray  # (2,) amplitude
    wobble_freq: float
    phase: float
    angle0: float
    spin: float
    first: int
    last: int


def _tracks(rng: np.random.Generator, cfg: SynthConfig, length: int) -> list[_Track]:
    h, w = cfg.height, cfg.width
    n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    classes = rng.integers(0, cfg.num_classes, size=n)
    if n >= 2 and rng.random() < 0.5:
        classes[1] = classes[0]  # several instances of one class at once
    tracks = []
    short = min(h, w)
    for i in range(n):
        radius = float(rng.uniform(0.12, 0.22) * short)
        mode = rng.choice(["stay", "enter", "leave", "cross"], p=[0.4, 0.2, 0.2, 0.2])
        speed = rng.uniform(0.3, 1.2) * short / max(length, 1) * 0.6
        direction = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(direction), np.sin(direction)])
        start = np.array([rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)])
        first, last = 0, length - 1
        if mode == "enter" and length > 2:
            first = int(rng.integers(1, max(2, length // 2)))
        elif mode == "leave" and length > 2:
            last = int(rng.integers(length // 2, length - 1))
        elif mode == "cross":
            # slide across the frame and out of it before the end
            velocity = velocity / max(np.linalg.norm(velocity), 1e-6) * (1.6 * max(h, w) / max(length, 1))
            start = np.array([w / 2, h / 2]) - velocity * length * 0.45
        tracks.append(_Track(
            class_index=int(classes[i]), radius=radius, start=start, velocity=velocity,
            wobble=rng.uniform(0, 0.08 * short, size=2), wobble_freq=float(rng.uniform(0.15, 0.5)),
            phase=float(rng.uniform(0, 2 * np.pi)), angle0=float(rng.uniform(0, 2 * np.pi)),
            spin=float(rng.uniform(-0.08, 0.08)), first=first, last=last,
        ))
    return tracks


def render_video(cfg: SynthConfig, index: int, length: int, only_frame: Optional[int] = None
                 ) -> tuple[list[np.ndarray], list[int], list[list[Optional[np.ndarray]]]]:
    """Frames (uint8 HxWx3), the class index of each track, and visible masks [track][frame] (None = absent).

    `only_frame`: render just that frame of the video (COCO images: the middle frame of a short
    video, where every track is on screen).
    """
    rng = np.random.default_rng([cfg.seed, index])
    h, w = cfg.height, cfg.width
    background = _background(rng, h, w)
    tracks = _tracks(rng, cfg, length)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames: list[np.ndarray] = []
    masks: list[list[Optional[np.ndarray]]] = [[None] * length for _ in tracks]
    for t in range(length) if only_frame is None else [only_frame]:
        canvas = background.copy()
        canvas += rng.normal(0, 2.0, size=(h, w, 1)).astype(np.float32)  # sensor noise varies per frame
        shapes = []
        for tr in tracks:
            if not tr.first <= t <= tr.last:
                shapes.append(None)
                continue
            centre = tr.start + tr.velocity * t + tr.wobble * np.sin(tr.wobble_freq * t + tr.phase)
            angle = tr.angle0 + tr.spin * t
            c, s = np.cos(angle), np.sin(angle)
            dx0, dy0 = xx - centre[0], yy - centre[1]
            dx, dy = c * dx0 + s * dy0, -s * dx0 + c * dy0
            r = tr.radius * (1.0 + 0.1 * np.sin(0.2 * t + tr.phase))
            name, shape, colour, texture = CLASS_STYLES[tr.class_index]
            inside = _shape_mask(shape, dx, dy, r)
            shapes.append(inside)
            if inside.any():
                shade = _texture(texture, dx, dy, r)[inside]
                canvas[inside] = np.asarray(colour, np.float32)[None, :] * shade[:, None]
        # draw order = depth order: a later track occludes the earlier ones
        covered = np.zeros((h, w), dtype=bool)
        for i in range(len(tracks) - 1, -1, -1):
            if shapes[i] is None:
                continue
            visible = shapes[i] & ~covered
            covered |= shapes[i]
            if visible.any():
                masks[i][t] = visible
        frames.append(np.clip(canvas, 0, 255).astype(np.uint8))
    if only_frame is not None:
        masks = [[track[only_frame]] for track in masks]
    return frames, [tr.class_index for tr in tracks], masks


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def generate(output: str, cfg: SynthConfig = SynthConfig(), io_threads: int = 16) -> dict:
    """Write a synthetic dataset to `output` (a URI); returns a summary with the JSON and frames URIs."""
    lengths_rng = np.random.default_rng([cfg.seed, 2**31 - 1])
    lengths = lengths_rng.integers(cfg.min_frames, cfg.max_frames + 1, size=cfg.num_videos)
    pending: list[tuple[str, np.ndarray]] = []
    annotations: list[dict] = []
    ann_id = 1
    if cfg.format == "ytvis":
        frames_dir = "JPEGImages"
        videos = []
        for i in range(cfg.num_videos):
            vid = cfg.start_video_id + i
            length = int(lengths[i])
            frames, classes, masks = render_video(cfg, vid, length)
            name = f"v{vid:05d}"
            file_names = [f"{name}/{t:05d}.jpg" for t in range(length)]
            videos.append({"id": vid, "width": cfg.width, "height": cfg.height, "length": length, "file_names": file_names})
            pending.extend(zip(file_names, frames))
            for cls, track in zip(classes, masks):
                if all(m is None for m in track):
                    continue  # never visible: not an annotation
                annotations.append({
                    "id": ann_id, "video_id": vid, "category_id": cls + 1, "iscrowd": 0,
                    "height": cfg.height, "width": cfg.width, "length": length,
                    "segmentations": [_rle(m) if m is not None else None for m in track],
                    "areas": [float(m.sum()) if m is not None else None for m in track],
                    "bboxes": [_bbox(m) if m is not None else None for m in track],
                })
                ann_id += 1
        data = {"info": {"description": "CTVIS synthetic VIS", "config": dataclasses.asdict(cfg)},
                "videos": videos, "annotations": annotations, "categories": categories(cfg.num_classes)}
    elif cfg.format == "coco":
        frames_dir = "images"
        images = []
        for i in range(cfg.num_videos):
            iid = cfg.start_video_id + i
            frames, classes, masks = render_video(cfg, iid, 9, only_frame=4)
            file_name = f"{iid:06d}.jpg"
            images.append({"id": iid, "file_name": file_name, "height": cfg.height, "width": cfg.width})
            pending.append((file_name, frames[0]))
            for cls, track in zip(classes, masks):
                if track[0] is None:
                    continue
                annotations.append({"id": ann_id, "image_id": iid, "category_id": cls + 1, "iscrowd": 0,
                                    "segmentation": _rle(track[0]), "area": float(track[0].sum()), "bbox": _bbox(track[0])})
                ann_id += 1
        data = {"info": {"description": "CTVIS synthetic COCO", "config": dataclasses.asdict(cfg)},
                "images": images, "annotations": annotations, "categories": categories(cfg.num_classes)}
    else:
        raise ValueError(f"format: expected 'ytvis' or 'coco', got {cfg.format!r}")

    frames_root = storage.join(output, frames_dir)
    storage.makedirs(output)

    def put(item: tuple[str, np.ndarray]) -> None:
        storage.write_bytes(storage.join(frames_root, item[0]), _jpeg(item[1], cfg.jpeg_quality))

    with ThreadPoolExecutor(max_workers=max(1, io_threads)) as pool:
        list(pool.map(put, pending))
    annotations_uri = storage.join(output, "annotations.json")
    storage.write_bytes(annotations_uri, json.dumps(data).encode("utf-8"))
    return {
        "annotations": annotations_uri,
        "frames_root": frames_root,
        "format": cfg.format,
        "videos": cfg.num_videos,
        "frames": len(pending),
        "annotations_count": len(annotations),
        "categories": [c["name"] for c in data["categories"]],
    }
