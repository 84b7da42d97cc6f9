"""The clip-batch contract: collation (padding, sizes) and validation errors naming the field."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.clip_batch import ClipBatch, ClipBatchError, collate_clips, padded_size


def _clip(rng, T, h, w, n, video_id=7):
    frames = rng.integers(1, 255, size=(T, 3, h, w), dtype=np.uint8)
    masks = np.zeros((T, n, h, w), dtype=bool)
    ids = np.full((T, n), -1, dtype=np.int64)
    for t in range(T):
        for k in range(n):
            if (t + k) % 3:  # present in some frames only
                masks[t, k, k : k + 3, 2:5] = True
                ids[t, k] = k
    return {"frames": frames, "masks": masks, "gt_ids": ids, "gt_classes": np.arange(n, dtype=np.int64),
            "video_id": video_id, "frame_indices": np.arange(T), "dataset_index": 1}


def test_collate_pads_to_divisibility_and_keeps_sizes():
    rng = np.random.default_rng(0)
    clips = [_clip(rng, 3, 40, 50, 2), _clip(rng, 3, 70, 33, 0), _clip(rng, 3, 20, 20, 4)]
    arrays = collate_clips(clips, size_divisibility=32)
    batch = ClipBatch.from_numpy(arrays).validate(32, num_classes=4)
    assert batch.images.shape == (3, 3, 3, 96, 64)
    assert batch.gt_masks.shape == (3, 3, 4, 96, 64)
    assert batch.image_sizes[:, 0].tolist() == [[40, 50], [70, 33], [20, 20]]
    assert torch.equal(batch.images[0, :, :, :40, :50], torch.from_numpy(clips[0]["frames"]))
    assert batch.images[0, :, :, 40:].abs().sum() == 0 and batch.images[0, :, :, :, 50:].abs().sum() == 0
    assert batch.gt_classes.tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]]
    assert (batch.gt_ids[1] == -1).all()
    assert torch.equal(batch.gt_masks[2, :, :, :20, :20], torch.from_numpy(clips[2]["masks"]))
    assert padded_size(33, 64, 32) == (64, 64) and padded_size(33, 64, 1) == (33, 64)


def test_collate_accepts_packed_masks():
    rng = np.random.default_rng(1)
    clip = _clip(rng, 2, 17, 23, 3)
    packed = dict(clip, masks_packed=np.packbits(clip["masks"].reshape(-1)))
    del packed["masks"]
    a = collate_clips([clip], 32)
    b = collate_clips([packed], 32)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "field, breaker",
    [
        ("images", lambda a: a.__setitem__("images", a["images"][:, :, :, :40])),
        ("images", lambda a: a["images"].__setitem__((0, 0, 0, 50, 50), 9)),
        ("image_sizes", lambda a: a.__setitem__("image_sizes", a["image_sizes"][:, :1])),
        ("gt_ids", lambda a: a["gt_ids"].__setitem__((0, 0, 0), 1)),
        ("gt_ids", lambda a: a["gt_ids"].__setitem__((1, 0, 1), 1)),
        ("gt_masks", lambda a: a["gt_masks"].__setitem__((0, 0, 0, 1, 1), True) or a["gt_ids"].__setitem__((0, 0, 0), -1)),
        ("gt_masks", lambda a: a["gt_masks"].__setitem__((0, 1, 1, 40, 40), True)),
        ("gt_classes", lambda a: a["gt_classes"].__setitem__((0, 0), -1)),
        ("gt_classes", lambda a: a.__setitem__("gt_classes", a["gt_classes"].astype(np.int32))),
        ("frame_indices", lambda a: a.__setitem__("frame_indices", a["frame_indices"][:, :1])),
    ],
)
def test_validate_names_the_broken_field(field, breaker):
    rng = np.random.default_rng(2)
    arrays = collate_clips([_clip(rng, 3, 40, 50, 2), _clip(rng, 3, 30, 30, 1)], 32)
    ClipBatch.from_numpy(arrays).validate()
    breaker(arrays)
    with pytest.raises(ClipBatchError, match=f"^{field}"):
        ClipBatch.from_numpy(arrays).validate()


def test_to_device_and_missing_field():
    rng = np.random.default_rng(3)
    batch = ClipBatch.from_numpy(collate_clips([_clip(rng, 2, 8, 8, 1)], 32))
    moved = batch.to("cpu")
    assert moved.images.device.type == "cpu" and moved.batch_size == 1 and moved.num_frames == 2
    with pytest.raises(ClipBatchError, match="missing field"):
        ClipBatch.from_numpy({"images": np.zeros((1, 1, 3, 32, 32), np.uint8)})
