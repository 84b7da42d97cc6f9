"""A user's video for `ctvis infer` and the pyfunc model: a video file (mp4, mov, webm, mkv, avi;
decoded with PyAV, which bundles FFmpeg), a folder of frames (jpg/png, in natural name order), or
either one on ``s3://`` (a remote video file is copied to a temporary file first; remote frames are
read one at a time). Frames come out one by one as uint8 (H, W, 3) RGB: nothing holds the video.

A frame that cannot be decoded, or whose size differs from the first frame's, is a `FrameProblem`
naming the video and the frame index (the caller stops or skips per ``--on-error``); a video that
cannot be opened or has no frame is a `UserVideoError`.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pipelines import storage

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = Fraction(6)  # YouTube-VIS and OVIS publish their frames at 6 fps (every 5th frame)


class UserVideoError(ValueError):
    """The video cannot be used at all; the message names it."""


@dataclasses.dataclass(frozen=True)
class FrameProblem:
    """Frame `index` (0-based, in decoding order) could not be used."""

    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class DecodedFrame:
    index: int  # 0-based, in decoding order (including frames that failed)
    image: Optional[np.ndarray]  # uint8 (H, W, 3) RGB, or None with a problem
    problem: Optional[FrameProblem] = None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class UserVideo:
    """One video, opened: ``name`` (for messages), ``fps``, ``num_frames`` when the container says
    it (else None), and :meth:`frames`. Use as a context manager (closes the decoder, removes a
    temporary copy)."""

    def __init__(self, name: str, fps: Fraction, num_frames: Optional[int]):
        self.name = name
        self.fps = fps
        self.num_frames = num_frames
        self._cleanup: list = []

    def frames(self) -> Iterator[DecodedFrame]:
        raise NotImplementedError

    def close(self) -> None:
        for action in reversed(self._cleanup):
            action()
        self._cleanup.clear()

    def __enter__(self) -> "UserVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _VideoFile(UserVideo):
    """A video container decoded by PyAV (first video stream)."""

    def __init__(self, name: str, path: Path):
        import av

        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as error:
            raise UserVideoError(f"{name}: cannot be opened as a video ({type(error).__name__}: {error})") from None
        if not container.streams.video:
            container.close()
            raise UserVideoError(f"{name}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads in FFmpeg's decoder
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        super().__init__(name, Fraction(rate), int(stream.frames) or None)
        self._container, self._stream = container, stream
        self._cleanup.append(container.close)

    def frames(self) -> Iterator[DecodedFrame]:
        import av

        index = 0
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                # The container itself is broken from here on (e.g. truncated): nothing more to read.
                yield DecodedFrame(index, None, FrameProblem(index, f"the stream breaks off ({error})"))
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as error:
                yield DecodedFrame(index, None, FrameProblem(index, f"cannot decode the frame ({error})"))
                index += 1
                continue
            for frame in decoded:
                yield DecodedFrame(index, frame.to_ndarray(format="rgb24"))
                index += 1
        if self.num_frames and index < self.num_frames:
            # A cut-off file: the container's index lists frames its data no longer holds.
            yield DecodedFrame(index, None, FrameProblem(index, f"the video ends at frame {index}, its container "
                                                                f"lists {self.num_frames} frames (truncated file?)"))


class _FrameFolder(UserVideo):
    """Image files in a folder (local or remote), in natural name order."""

    def __init__(self, name: str, uris: list[str], fps: Fraction):
        super().__init__(name, fps, len(uris))
        self._uris = uris

    def frames(self) -> Iterator[DecodedFrame]:
        from pipelines.data.augment import decode_image

        for index, uri in enumerate(self._uris):
            file_name = uri.rsplit("/", 1)[-1]
            try:
                image = np.asarray(decode_image(storage.read_bytes(uri)))
            except Exception as error:  # noqa: BLE001 - PIL raises several types for bad data
                yield DecodedFrame(index, None, FrameProblem(index, f"{file_name}: cannot decode the frame "
                                                                    f"({type(error).__name__}: {error})"))
                continue
            yield DecodedFrame(index, image)


def open_video(uri: str, fps: Optional[float] = None) -> UserVideo:
    """Open `uri` (see the module notes). `fps` sets a frame folder's rate (default 6, the rate of the
    YouTube-VIS / OVIS frames) or overrides a file's."""
    name = storage.redact(uri)
    try:
        if not storage.exists(uri):
            raise UserVideoError(f"{name}: no such video file or frame folder")
        local = storage.local_path(uri)
        is_dir = local.is_dir() if local is not None else not uri.lower().endswith(VIDEO_SUFFIXES)
        if is_dir:
            files = [u for u in storage.ls(uri) if u.lower().endswith(IMAGE_SUFFIXES)]
            if not files:
                raise UserVideoError(f"{name}: a folder without frames (no {'/'.join(IMAGE_SUFFIXES)} files)")
            files.sort(key=lambda u: _natural_key(u.rsplit("/", 1)[-1]))
            return _FrameFolder(name, files, Fraction(fps).limit_denominator(1001) if fps else DEFAULT_FOLDER_FPS)
        if local is None:  # a remote video file: PyAV reads a local copy (seekable, streamed in chunks)
            tmp = Path(tempfile.mkdtemp(prefix="ctvis-video-"))
            copy = tmp / Path(storage.split_uri(uri)[1]).name
            try:
                storage.copy(uri, str(copy))
                video = _VideoFile(name, copy)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            video._cleanup.insert(0, lambda: shutil.rmtree(tmp, ignore_errors=True))
        else:
            video = _VideoFile(name, local)
    except storage.StorageError as error:
        raise UserVideoError(f"{name}: cannot be read ({error})") from None
    if fps:
        video.fps = Fraction(fps).limit_denominator(1001)
    return video
