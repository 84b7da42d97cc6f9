"""The videos of an ingested split, as the model sees them at test time.

Frames are decoded from the split's Parquet shards and resized as detectron2's test mapper does
(`ResizeShortestEdge(min_size_test, max_size_test)`, bilinear); results are written at the
original size."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pipelines import storage
from pipelines.data.augment import decode_image, shortest_edge_size
from pipelines.data.shards import Manifest, ShardReader


class VideoDecodeError(ValueError):
    """A frame of a video cannot be decoded; the message names the video, the frame and the shard."""

    def __init__(self, message: str, video_id: int, frame: int):
        super().__init__(message)
        self.video_id = video_id
        self.frame = frame


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """Where one video of a split lives (small and picklable: one Ray Data row)."""

    video_id: int
    shard_uri: str
    row: int
    length: int


def video_refs(manifest: Manifest, max_videos: Optional[int] = None) -> list[VideoRef]:
    """The split's videos in manifest order (the first `max_videos` when given)."""
    count = manifest.num_videos if max_videos is None else min(max_videos, manifest.num_videos)
    return [VideoRef(int(manifest.video_ids[v]), manifest.shard_uri(int(manifest.shard_index[v])),
                     int(manifest.row_index[v]), int(manifest.lengths[v])) for v in range(count)]


@dataclasses.dataclass
class TestVideo:
    video_id: int
    frames: np.ndarray  # uint8 (T, 3, h, w) resized to the test size
    original_size: tuple[int, int]  # (H, W) the results are written at
    encoded_frames: list[bytes]  # the published frame files (decoded again only to draw overlays)

    def original_frames(self) -> np.ndarray:
        """uint8 (T, H, W, 3) at the original resolution."""
        return np.stack([np.asarray(decode_image(data)) for data in self.encoded_frames])


def resize_test_frame(image, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame (PIL image or uint8 (H, W, 3)) -> uint8 (3, h, w) at the test size, bilinear with
    Pillow as detectron2's test mapper (`ctvis predict`, validation and `ctvis infer` alike)."""
    from PIL import Image

    height, width = size
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (height, width):
            return image.transpose(2, 0, 1)
        image = Image.fromarray(image)
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def read_test_video(reader: ShardReader, ref: VideoRef, min_size_test: int, max_size_test: int) -> TestVideo:
    """Decode and resize the frames of `ref` (a `VideoDecodeError` names the frame that fails)."""
    row = reader.read(ref.shard_uri, ref.row)
    height, width = int(row["height"]), int(row["width"])
    size = shortest_edge_size(height, width, min_size_test, max_size_test)
    frames = []
    for index, data in enumerate(row["frames"]):
        where = f"video {ref.video_id} frame {index} ({storage.redact(ref.shard_uri)} row {ref.row})"
        try:
            image = decode_image(data)
        except Exception as error:  # noqa: BLE001 - PIL raises several types for bad data
            raise VideoDecodeError(f"{where}: cannot decode the frame ({type(error).__name__}: {error})",
                                   ref.video_id, index) from None
        if (image.height, image.width) != (height, width):
            raise VideoDecodeError(f"{where}: the frame is {image.height}x{image.width}, the video {height}x{width}",
                                   ref.video_id, index)
        frames.append(resize_test_frame(image, size))
    if not frames:
        raise VideoDecodeError(f"video {ref.video_id} ({storage.redact(ref.shard_uri)} row {ref.row}): no frames",
                               ref.video_id, 0)
    return TestVideo(ref.video_id, np.stack(frames), (height, width), list(row["frames"]))
