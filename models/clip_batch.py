"""The clip batch: what the data pipeline hands to the CTVIS training step.

Letters: B clips, T frames per clip, N instances (max over the batch), H, W padded image size.

==================  ===============  =====================================================================
field               dtype / shape    meaning
==================  ===============  =====================================================================
``images``          uint8 (B,T,3,H,W) RGB frames, zero-padded at the bottom/right to H, W multiples of the
                                     size divisibility (32); H, W = max over the batch
``image_sizes``     int64 (B,T,2)    unpadded (h, w) of every frame. The model normalises the images and
                                     then zeroes the padding again, so padding is 0 in normalised space
                                     (as detectron2's ImageList does)
``gt_classes``      int64 (B,N)      contiguous class index in [0, K) of each instance of the clip; -1 in
                                     padding columns (clip b has N_b <= N instances, columns >= N_b pad)
``gt_ids``          int64 (B,T,N)    the instance's id within its clip (0..N_b-1, equal to its column)
                                     where it is present in that frame; -1 where it is absent (left the
                                     crop, null segmentation, empty after augmentation, or padding)
``gt_masks``        bool (B,T,N,H,W) masks at the padded image resolution; all False where absent
``video_ids``       int64 (B,)       the dataset's video (or image, for pseudo-videos) id
``frame_indices``   int64 (B,T)      the frame of the video each clip frame was taken from
``dataset_index``   int64 (B,)       which training dataset (position in the data config) the clip is from
==================  ===============  =====================================================================

Category ids of a dataset map to contiguous indices through its category table sorted by id, like
detectron2's dataset mappers (``thing_dataset_id_to_contiguous_id``).

`collate_clips` builds a batch from per-clip arrays (pure numpy, usable in a notebook or a Ray Data
consumer); `ClipBatch.from_numpy` / `.to(device)` move it into torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

FIELDS = ("images", "image_sizes", "gt_classes", "gt_ids", "gt_masks", "video_ids", "frame_indices", "dataset_index")


class ClipBatchError(ValueError):
    """A clip batch breaks the contract; the message names the field."""


@dataclasses.dataclass
class ClipBatch:
    images: torch.Tensor  # uint8 (B,T,3,H,W)
    image_sizes: torch.Tensor  # int64 (B,T,2)
    gt_classes: torch.Tensor  # int64 (B,N)
    gt_ids: torch.Tensor  # int64 (B,T,N)
    gt_masks: torch.Tensor  # bool (B,T,N,H,W)
    video_ids: torch.Tensor  # int64 (B,)
    frame_indices: torch.Tensor  # int64 (B,T)
    dataset_index: torch.Tensor  # int64 (B,)

    # ---------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_instances(self) -> int:
        return int(self.gt_classes.shape[1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, Any]) -> "ClipBatch":
        """From a mapping of numpy arrays (or tensors) with the contract's field names and dtypes."""
        missing = [f for f in FIELDS if f not in arrays]
        if missing:
            raise ClipBatchError(f"ClipBatch.from_numpy: missing field(s) {missing}")
        tensors = {}
        for name in FIELDS:
            value = arrays[name]
            tensors[name] = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return cls(**tensors)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "ClipBatch":
        """A copy on `device` (tensors already there are not copied)."""
        return ClipBatch(**{f: getattr(self, f).to(device, non_blocking=non_blocking) for f in FIELDS})

    def pin_memory(self) -> "ClipBatch":
        return ClipBatch(**{f: getattr(self, f).pin_memory() for f in FIELDS})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in FIELDS}

    # ---------------------------------------------------------------------------------------
    def validate(self, size_divisibility: int = 32, num_classes: Optional[int] = None) -> "ClipBatch":
        """Check shapes, dtypes and conventions; raise `ClipBatchError` naming the field. Returns self."""
        expected_dtypes = {
            "images": torch.uint8,
            "image_sizes": torch.int64,
            "gt_classes": torch.int64,
            "gt_ids": torch.int64,
            "gt_masks": torch.bool,
            "video_ids": torch.int64,
            "frame_indices": torch.int64,
            "dataset_index": torch.int64,
        }
        for name, dtype in expected_dtypes.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ClipBatchError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
            if value.dtype != dtype:
                raise ClipBatchError(f"{name}: expected dtype {dtype}, got {value.dtype}")
        if self.images.dim() != 5 or self.images.shape[2] != 3:
            raise ClipBatchError(f"images: expected shape (B,T,3,H,W), got {tuple(self.images.shape)}")
        B, T, _, H, W = self.images.shape
        if size_divisibility > 1 and (H % size_divisibility or W % size_divisibility):
            raise ClipBatchError(f"images: padded size {H}x{W} is not a multiple of {size_divisibility}")
        if tuple(self.image_sizes.shape) != (B, T, 2):
            raise ClipBatchError(f"image_sizes: expected shape {(B, T, 2)}, got {tuple(self.image_sizes.shape)}")
        if self.gt_classes.dim() != 2 or self.gt_classes.shape[0] != B:
            raise ClipBatchError(f"gt_classes: expected shape (B={B}, N), got {tuple(self.gt_classes.shape)}")
        N = self.gt_classes.shape[1]
        shapes = {
            "gt_ids": (B, T, N),
            "gt_masks": (B, T, N, H, W),
            "video_ids": (B,),
            "frame_indices": (B, T),
            "dataset_index": (B,),
        }
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ClipBatchError(f"{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")

        sizes = self.image_sizes
        if (sizes < 1).any():
            raise ClipBatchError("image_sizes: every frame needs h, w >= 1")
        if (sizes[..., 0] > H).any() or (sizes[..., 1] > W).any():
            raise ClipBatchError(f"image_sizes: a frame is larger than the padded size {H}x{W}")

        classes = self.gt_classes
        if (classes < -1).any():
            raise ClipBatchError("gt_classes: values must be >= -1 (-1 marks padding columns)")
        if num_classes is not None and (classes >= num_classes).any():
            raise ClipBatchError(f"gt_classes: values must be < num_classes={num_classes}")
        # padding columns are a suffix: once -1, -1 to the end of the row
        valid = classes >= 0  # (B,N)
        if (valid[:, 1:] & ~valid[:, :-1]).any():
            raise ClipBatchError("gt_classes: padding (-1) columns must come after the instances of each clip")

        ids = self.gt_ids
        column = torch.arange(N, device=ids.device).view(1, 1, N).expand(B, T, N)
        present = ids >= 0
        if ((ids != -1) & (ids != column)).any():
            raise ClipBatchError("gt_ids: must be -1 (absent) or the instance's column index 0..N_b-1")
        if (present & ~valid[:, None, :]).any():
            raise ClipBatchError("gt_ids: an instance is present in a padding column (gt_classes == -1)")

        masks = self.gt_masks
        if B and T and N:
            nonempty = masks.flatten(3).any(-1)  # (B,T,N)
            if (nonempty & ~present).any():
                raise ClipBatchError("gt_masks: a mask is not empty where gt_ids is -1 (absent)")
            if (present & ~nonempty).any():
                raise ClipBatchError("gt_masks: a mask is empty where gt_ids marks the instance present")
            # nothing outside each frame's unpadded area
            rows = torch.arange(H, device=masks.device).view(1, 1, H)
            cols = torch.arange(W, device=masks.device).view(1, 1, W)
            outside = (rows[..., None] >= sizes[..., 0, None, None]) | (cols[:, :, None, :] >= sizes[..., 1, None, None])
            if (masks & outside[:, :, None]).any():
                raise ClipBatchError("gt_masks: mask pixels in the padding area")
        if B and T:
            rows = torch.arange(H, device=self.images.device).view(1, 1, H, 1)
            cols = torch.arange(W, device=self.images.device).view(1, 1, 1, W)
            pad = (rows >= sizes[..., 0, None, None]) | (cols >= sizes[..., 1, None, None])  # (B,T,H,W)
            if (self.images.amax(dim=2) * pad).any():
                raise ClipBatchError("images: padding area must be zero")
        if (self.frame_indices < 0).any():
            raise ClipBatchError("frame_indices: must be >= 0")
        return self


# --------------------------------------------------------------------------------------------
def padded_size(height: int, width: int, size_divisibility: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `size_divisibility` (<= 1: unchanged)."""
    if size_divisibility <= 1:
        return int(height), int(width)
    d = int(size_divisibility)
    return -(-int(height) // d) * d, -(-int(width) // d) * d


def collate_clips(clips: Sequence[Mapping[str, Any]], size_divisibility: int = 32) -> dict[str, np.ndarray]:
    """Pad and stack per-clip arrays into the contract's numpy arrays (feed to `ClipBatch.from_numpy`).

    Each clip is a mapping with
      ``frames`` uint8 (T,3,h,w), ``masks`` bool (T,N_b,h,w) (or ``masks_packed``: uint8, the
      `np.packbits` of that array, flattened), ``gt_ids`` int64 (T,N_b), ``gt_classes`` int64 (N_b,),
      ``image_sizes`` int64 (T,2) (optional: (h, w) of every frame, defaults to the frames' size),
      ``video_id``, ``frame_indices`` (T,), ``dataset_index``.
    All clips must have the same T. Masks and frames are copied once, into the padded buffers.
    """
    if not clips:
        raise ClipBatchError("collate_clips: no clips")
    B = len(clips)
    T = int(np.shape(clips[0]["frames"])[0])
    heights, widths, counts = [], [], []
    for b, clip in enumerate(clips):
        frames = clip["frames"]
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != np.uint8:
            raise ClipBatchError(f"frames of clip {b}: expected uint8 (T,3,h,w), got {frames.dtype} {frames.shape}")
        if frames.shape[0] != T:
            raise ClipBatchError(f"frames of clip {b}: {frames.shape[0]} frames, clip 0 has {T}")
        heights.append(frames.shape[2])
        widths.append(frames.shape[3])
        counts.append(int(np.shape(clip["gt_classes"])[0]))
    H, W = padded_size(max(heights), max(widths), size_divisibility)
    N = max(counts)

    images = np.zeros((B, T, 3, H, W), dtype=np.uint8)
    image_sizes = np.zeros((B, T, 2), dtype=np.int64)
    gt_classes = np.full((B, N), -1, dtype=np.int64)
    gt_ids = np.full((B, T, N), -1, dtype=np.int64)
    gt_masks = np.zeros((B, T, N, H, W), dtype=bool)
    video_ids = np.zeros((B,), dtype=np.int64)
    frame_indices = np.zeros((B, T), dtype=np.int64)
    dataset_index = np.zeros((B,), dtype=np.int64)
    for b, clip in enumerate(clips):
        h, w, n = heights[b], widths[b], counts[b]
        images[b, :, :, :h, :w] = clip["frames"]
        sizes = clip.get("image_sizes")
        image_sizes[b] = np.asarray(sizes, dtype=np.int64) if sizes is not None else (h, w)
        gt_classes[b, :n] = clip["gt_classes"]
        ids = np.asarray(clip["gt_ids"], dtype=np.int64)
        if ids.shape != (T, n):
            raise ClipBatchError(f"gt_ids of clip {b}: expected shape {(T, n)}, got {ids.shape}")
        gt_ids[b, :, :n] = ids
        if n:
            if "masks_packed" in clip:
                masks = np.unpackbits(clip["masks_packed"], count=T * n * h * w).view(bool).reshape(T, n, h, w)
            else:
                masks = clip["masks"]
            if masks.shape != (T, n, h, w):
                raise ClipBatchError(f"masks of clip {b}: expected shape {(T, n, h, w)}, got {masks.shape}")
            gt_masks[b, :, :n, :h, :w] = masks
        video_ids[b] = int(clip["video_id"])
        frame_indices[b] = clip["frame_indices"]
        dataset_index[b] = int(clip["dataset_index"])
    return {
        "images": images,
        "image_sizes": image_sizes,
        "gt_classes": gt_classes,
        "gt_ids": gt_ids,
        "gt_masks": gt_masks,
        "video_ids": video_ids,
        "frame_indices": frame_indices,
        "dataset_index": dataset_index,
    }
