"""Clip-consistent augmentation as CTVIS trains: a pure function of (video row, frames, seed).

Videos (CTVIS ``build_augmentation`` with ``*_by_clip`` sampling), per clip of T frames:
  1. with probability 1/2 (if the crop is enabled) the moving crop: a crop size drawn once in
     [min(side, lo), min(side, hi)] per side (``absolute_range``, 384-600), a start and an end
     position, and T sorted uniform weights between them, so the window slides monotonically
     across the clip (reversed with probability 1/2);
  2. one shortest-edge size per clip from ``min_size_train`` (320 ... 640), the longer edge capped
     at ``max_size_train`` (768): new size = int(side * scale + 0.5);
  3. one horizontal flip decision per clip (probability 1/2).
COCO images as pseudo-videos (CTVIS ``build_pseudo_augmentation``), T augmented copies of one image:
  1. with probability 1/2: resize the shortest edge to one of (400, 500, 600) (longer edge <= 1333),
     then the moving crop as above;
  2. shortest-edge resize with the pseudo sizes; 3. one flip decision per clip;
  4. rotation: T angles uniform in [-a, a] (a = 15 deg), sorted (reversed with probability 1/2), so
     they change monotonically, about one centre per clip drawn in [0.4, 0.6]^2 of the frame, no
     expansion, zero fill.

Images go through detectron2's transforms in its order (crop, then a bilinear resize that is
antialiased when shrinking, as Pillow's ``Image.resize``); the resize runs on torch's uint8 kernel
(`resize_bilinear`), within 1 intensity level of Pillow's values for the same draws. Masks follow with nearest-neighbour sampling; their index maps reproduce Pillow's NEAREST
resize bit for bit and are applied to all instances of a frame at once. An instance whose mask
is empty after augmentation (left the crop) or null at the source gets id -1 in that frame.

Deviations from the released code, on purpose: the released video crop (`RandomCropClip` in
ctvis/data/vis/augmentation.py) reads the position of the first frame for every frame, so its
window does not actually move; ``crop_motion="first_position"`` reproduces that, the default
``"sliding"`` moves it as the pseudo-video crop does and as the paper describes. Rotation uses
Pillow's affine transform instead of OpenCV's warpAffine (same angle, centre and fill; bilinear
values may differ by rounding). Crowd annotations are left out of clips (the released mapper keeps
their ids as never-present dummies).
"""
from __future__ import annotations

import dataclasses
import io
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_MIN_SIZES = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)


@dataclasses.dataclass(frozen=True)
class VideoAugmentation:
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = 768
    flip: bool = True
    crop_enabled: bool = True
    crop_size: tuple[int, int] = (384, 600)
    crop_motion: Literal["sliding", "first_position"] = "sliding"


@dataclasses.dataclass(frozen=True)
class PseudoVideoAugmentation:
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = 768
    flip: bool = True
    crop_enabled: bool = True
    crop_size: tuple[int, int] = (384, 600)
    pre_crop_sizes: tuple[int, ...] = (400, 500, 600)
    pre_crop_max_size: int = 1333
    rotation: bool = True
    rotate_angle: float = 15.0
    rotation_center: tuple[float, float] = (0.4, 0.6)


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Every random decision of one clip (T frames). Sizes are (h, w); boxes (y, x, h, w)."""

    source_size: tuple[int, int]
    pre_resize: Optional[tuple[int, int]]  # pseudo-videos: resize before the crop
    crop_boxes: Optional[np.ndarray]  # int64 (T,4) y, x, h, w in the (pre-resized) frame, or None
    out_size: tuple[int, int]
    flip: bool
    angles: Optional[np.ndarray]  # float64 (T,) degrees counter-clockwise, or None
    center: Optional[tuple[float, float]]  # rotation centre (x, y) relative to the frame


def shortest_edge_size(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge arithmetic (round half up after capping the longer edge)."""
    scale = size * 1.0 / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def _moving_crop(rng: np.random.Generator, h: int, w: int, T: int, crop_size: tuple[int, int]) -> np.ndarray:
    lo, hi = crop_size
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    h0 = int(rng.integers(h - ch + 1))
    w0 = int(rng.integers(w - cw + 1))
    h1 = int(rng.integers(h0, h - ch + 1))
    w1 = int(rng.integers(w0, w - cw + 1))
    x = np.sort(rng.random(T))
    ys = np.round(h0 * x + h1 * (1 - x)).astype(np.int64)
    xs = np.round(w0 * x + w1 * (1 - x)).astype(np.int64)
    if rng.random() < 0.5:
        ys, xs = ys[::-1], xs[::-1]
    boxes = np.empty((T, 4), dtype=np.int64)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = ys, xs, ch, cw
    return boxes


def plan_video_clip(rng: np.random.Generator, height: int, width: int, T: int, aug: VideoAugmentation) -> ClipPlan:
    h, w = height, width
    boxes = None
    if aug.crop_enabled and rng.random() > 0.5:
        boxes = _moving_crop(rng, h, w, T, aug.crop_size)
        if aug.crop_motion == "first_position":
            boxes[:] = boxes[0]
        h, w = int(boxes[0, 2]), int(boxes[0, 3])
    size = int(rng.choice(np.asarray(aug.min_sizes)))
    out = shortest_edge_size(h, w, size, aug.max_size)
    flip = bool(aug.flip and rng.random() < 0.5)
    return ClipPlan((height, width), None, boxes, out, flip, None, None)


def plan_pseudo_clip(rng: np.random.Generator, height: int, width: int, T: int, aug: PseudoVideoAugmentation) -> ClipPlan:
    h, w = height, width
    pre = None
    boxes = None
    if aug.crop_enabled and rng.random() < 0.5:
        pre = shortest_edge_size(h, w, int(rng.choice(np.asarray(aug.pre_crop_sizes))), aug.pre_crop_max_size)
        boxes = _moving_crop(rng, pre[0], pre[1], T, aug.crop_size)
        h, w = int(boxes[0, 2]), int(boxes[0, 3])
    size = int(rng.choice(np.asarray(aug.min_sizes)))
    out = shortest_edge_size(h, w, size, aug.max_size)
    flip = bool(aug.flip and rng.random() < 0.5)
    angles = center = None
    if aug.rotation:
        angles = np.sort(rng.uniform(-aug.rotate_angle, aug.rotate_angle, size=T))
        lo, hi = aug.rotation_center
        center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if rng.random() < 0.5:
            angles = angles[::-1].copy()
    return ClipPlan((height, width), pre, boxes, out, flip, angles, center)


# --------------------------------------------------------------------------------------------
def nearest_index(n_in: int, n_out: int, offset: int = 0) -> np.ndarray:
    """Source index of every output pixel of Pillow's NEAREST resize of `n_in` -> `n_out` pixels.

    Pillow tabulates the positions by repeated addition of the scale (not multiplication); the
    sequential `np.add.accumulate` reproduces its float rounding, so masks match bit for bit.
    """
    scale = n_in / n_out
    steps = np.full(n_out, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    idx = np.add.accumulate(steps).astype(np.int64)
    return np.minimum(idx, n_in - 1) + offset


def _axis_maps(plan: ClipPlan, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index maps (into the source frame) of frame t's crop / resize / flip."""
    h, w = plan.source_size
    rows = np.arange(h)
    cols = np.arange(w)
    if plan.pre_resize is not None:
        rows = nearest_index(h, plan.pre_resize[0])
        cols = nearest_index(w, plan.pre_resize[1])
    if plan.crop_boxes is not None:
        y, x, ch, cw = (int(v) for v in plan.crop_boxes[t])
        rows = rows[y:y + ch]
        cols = cols[x:x + cw]
    rows = rows[nearest_index(len(rows), plan.out_size[0])]
    cols = cols[nearest_index(len(cols), plan.out_size[1])]
    if plan.flip:
        cols = cols[::-1]
    return rows, cols


def _rotation_inverse(angle: float, cx: float, cy: float) -> tuple[float, ...]:
    """Affine coefficients output (x, y) -> input, for a rotation by `angle` degrees counter-clockwise
    (as displayed, y down) about (cx, cy) in continuous pixel coordinates."""
    theta = np.deg2rad(angle)
    a, b = np.cos(theta), np.sin(theta)
    return (a, -b, cx - a * cx + b * cy, b, a, cy - b * cx - a * cy)


def _rotate_masks(masks: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """Nearest-neighbour rotation of (N,h,w) masks with output->input affine `coeffs`, zero fill."""
    n, h, w = masks.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xs += 0.5
    ys += 0.5
    a0, a1, a2, a3, a4, a5 = coeffs
    sx = np.floor(a0 * xs + a1 * ys + a2).astype(np.int64)
    sy = np.floor(a3 * xs + a4 * ys + a5).astype(np.int64)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros_like(masks)
    out[:, inside] = masks[:, sy[inside], sx[inside]]
    return out


def decode_image(data: bytes):
    """JPEG (or PNG) bytes -> RGB PIL image, as detectron2's read_image(format="RGB")."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")


def resize_bilinear(image: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """uint8 (H, W, 3) -> uint8 (h, w, 3): the bilinear resize of Pillow (``Image.resize(BILINEAR)``,
    antialiased when shrinking, as detectron2 applies it), computed by torch's uint8 AVX2 kernel
    (``interpolate(antialias=True)``, made to follow Pillow): within 1 intensity level of Pillow's
    values, 2.5-3.7x faster on 720p frames (tests/test_data_augment.py states and checks the bound).
    A same-size resize is the identity, as in Pillow."""
    import torch.nn.functional as F

    if tuple(image.shape[:2]) == tuple(size):
        return image
    # (H, W, 3) viewed as (1, 3, H, W) is channels-last: the fast uint8 path, no copy.
    resized = F.interpolate(image.permute(2, 0, 1)[None], size=tuple(size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized[0].permute(1, 2, 0)


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG (or PNG) bytes -> uint8 (H, W, 3) RGB, writable. JPEGs are decoded by simplejpeg (the
    libjpeg-turbo Pillow uses, straight into a numpy array: the same pixels as `decode_image`,
    2.8 vs 3.6 ms for a 720p frame with Pillow's copy out of its image); anything else, or a JPEG
    simplejpeg refuses (e.g. CMYK, damaged), by Pillow, which then names the problem."""
    import simplejpeg

    if simplejpeg.is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass
    return np.array(decode_image(data))


def _transform_image(image: np.ndarray, plan: ClipPlan, t: int, out: np.ndarray) -> None:
    """One frame, uint8 (H, W, 3) RGB, through the plan (detectron2's order: pre-resize, crop,
    resize, flip, rotation), written into `out` uint8 (3, h, w)."""
    import torch

    frame = torch.from_numpy(image)
    if plan.pre_resize is not None:
        frame = resize_bilinear(frame, plan.pre_resize)
    if plan.crop_boxes is not None:
        y, x, ch, cw = (int(v) for v in plan.crop_boxes[t])
        frame = frame[y:y + ch, x:x + cw]
    oh, ow = plan.out_size
    frame = resize_bilinear(frame, (oh, ow))
    if plan.flip:
        frame = frame.flip(1)
    if plan.angles is not None and plan.angles[t] % 360 != 0:
        from PIL import Image

        coeffs = _rotation_inverse(float(plan.angles[t]), plan.center[0] * ow, plan.center[1] * oh)
        rotated = Image.fromarray(np.ascontiguousarray(frame.numpy())).transform(
            (ow, oh), Image.Transform.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0)
        frame = torch.from_numpy(np.array(rotated))
    out[:] = frame.permute(2, 0, 1).numpy()


def apply_plan(
    plan: ClipPlan,
    images: Sequence[Any],
    frame_masks: Sequence[Optional["SourceMasks"]],
    num_instances: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply `plan` to T source frames.

    images: T uint8 (H, W, 3) RGB frames of the source size (the same array may repeat).
    frame_masks: per frame the `SourceMasks` of the clip's instances annotated in it (None: none).
    Returns frames uint8 (T,3,h,w) and masks bool (T,N,h,w), N = num_instances.
    """
    T = len(images)
    oh, ow = plan.out_size
    frames = np.empty((T, 3, oh, ow), dtype=np.uint8)
    masks = np.zeros((T, num_instances, oh, ow), dtype=bool)
    for t in range(T):
        _transform_image(images[t], plan, t, frames[t])
        source = frame_masks[t]
        if source is None or not len(source.instances):
            continue
        rows, cols = _axis_maps(plan, t)
        # masks are column-major (pycocotools): gather whole source columns first (contiguous
        # copies), then the rows, then transpose once into place
        m = np.take(np.take(source.columns, cols, axis=1), rows, axis=2).transpose(0, 2, 1)
        if plan.angles is not None and plan.angles[t] % 360 != 0:
            m = _rotate_masks(m, _rotation_inverse(float(plan.angles[t]), plan.center[0] * ow, plan.center[1] * oh))
        masks[t, source.instances] = m.view(bool)
    return frames, masks


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceMasks:
    """The masks of one source frame: `columns` uint8 (n, W, H) (column-major, as RLE decodes)
    of the clip instances listed in `instances` (their positions among the clip's N)."""

    instances: np.ndarray  # int64 (n,)
    columns: np.ndarray  # uint8 (n, W, H)


def decode_frame_masks(counts: Sequence[Optional[bytes]], height: int, width: int) -> SourceMasks:
    """Decode one frame's RLEs of the clip's instances (None where absent) without copying."""
    from pycocotools import mask as mask_util

    present = np.asarray([i for i, c in enumerate(counts) if c is not None], dtype=np.int64)
    if not len(present):
        return SourceMasks(present, np.zeros((0, width, height), dtype=np.uint8))
    decoded = mask_util.decode([{"size": [height, width], "counts": counts[i]} for i in present])  # (H,W,n) F-order
    return SourceMasks(present, decoded.transpose(2, 1, 0))  # (n,W,H), C-contiguous view


def plan_clip(kind: Literal["video", "image"], seed: int, height: int, width: int, T: int,
              augmentation: VideoAugmentation | PseudoVideoAugmentation) -> ClipPlan:
    """The random decisions of a clip: a pure function of the seed (what `augment_clip` applies)."""
    rng = np.random.default_rng(seed)
    if kind == "video":
        if not isinstance(augmentation, VideoAugmentation):
            raise TypeError("a video clip needs a VideoAugmentation")
        return plan_video_clip(rng, height, width, T, augmentation)
    if kind == "image":
        if not isinstance(augmentation, PseudoVideoAugmentation):
            raise TypeError("a pseudo-video clip needs a PseudoVideoAugmentation")
        return plan_pseudo_clip(rng, height, width, T, augmentation)
    raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")


def augment_clip(
    row: Mapping[str, Any],
    frame_indices: Sequence[int],
    kind: Literal["video", "image"],
    seed: int,
    augmentation: VideoAugmentation | PseudoVideoAugmentation,
    class_index: Mapping[int, int],
) -> dict[str, np.ndarray]:
    """One training clip from a shard row: the per-clip arrays `models.clip_batch.collate_clips` takes.

    row: a shard row (``height``, ``width``, ``frames``, ``segmentations``, ``category_ids``,
    ``iscrowd``, ``video_id``); frame_indices: T source frames (videos) or T fake indices
    (pseudo-videos: every frame is the image); seed: the clip's augmentation seed; class_index:
    dataset category id -> contiguous class.
    """
    h, w = int(row["height"]), int(row["width"])
    T = len(frame_indices)
    plan = plan_clip(kind, seed, h, w, T, augmentation)
    source = [int(f) for f in frame_indices] if kind == "video" else [0] * T
    keep = [k for k, crowd in enumerate(row["iscrowd"]) if not crowd]
    segms = row["segmentations"]
    if kind == "video":
        chosen = sorted(set(source))
        # instances annotated in at least one of the sampled frames, in annotation-id order
        keep = [k for k in keep if any(segms[k][f] is not None for f in chosen)]
    decoded = {f: decode_rgb(row["frames"][f]) for f in sorted(set(source))}
    images = [decoded[f] for f in source]
    for f, image in decoded.items():
        if image.shape[:2] != (h, w):
            raise ValueError(f"video {row['video_id']} frame {f}: image is {image.shape[1]}x{image.shape[0]}, "
                             f"the shard says {w}x{h}")
    if keep:
        per_source = {f: decode_frame_masks([segms[k][f] for k in keep], h, w) for f in sorted(set(source))}
        frame_masks = [per_source[f] for f in source]
    else:
        frame_masks = [None] * T
    n = len(keep)
    frames, masks = apply_plan(plan, images, frame_masks, n)
    present = masks.reshape(T, n, -1).any(-1) if n else np.zeros((T, 0), dtype=bool)
    gt_ids = np.where(present, np.arange(n)[None, :], -1).astype(np.int64)
    categories = row["category_ids"]
    try:
        gt_classes = np.asarray([class_index[int(categories[k])] for k in keep], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"video {row['video_id']}: category id {exc.args[0]} is not in the dataset's category table") from None
    return {
        "frames": frames,
        "masks": masks,
        "gt_ids": gt_ids,
        "gt_classes": gt_classes.reshape(n),
        "image_sizes": np.tile(np.asarray(plan.out_size, dtype=np.int64), (T, 1)),
        "video_id": int(row["video_id"]),
        "frame_indices": np.asarray(frame_indices, dtype=np.int64),
    }
