"""The overlay video of `ctvis infer`: each frame with its tracks' masks in their colours and a label
(track id, class, score), encoded with PyAV as H.264 in yuv420p with the index at the front of the
file (``+faststart``), which browsers play.

yuv420p needs even sizes: an odd width or height loses its last column or row in the overlay (the
results keep the full size)."""
from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

# Distinct, saturated colours (RGB); track id i gets PALETTE[i % len(PALETTE)].
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
], dtype=np.float32)
MASK_ALPHA = 0.5


def track_colour(track_id: int) -> np.ndarray:
    return PALETTE[int(track_id) % len(PALETTE)]


def draw_overlay(image: np.ndarray, masks: np.ndarray, track_ids: Sequence[int], captions: Sequence[str]) -> np.ndarray:
    """image uint8 (H, W, 3) RGB; masks bool (n, H, W); one caption per mask, drawn at the top-left
    of the mask's box. Returns a new uint8 (H, W, 3)."""
    from PIL import Image, ImageDraw

    blended = image.astype(np.float32)
    for mask, track_id in zip(masks, track_ids):
        blended[mask] = blended[mask] * (1 - MASK_ALPHA) + track_colour(track_id) * MASK_ALPHA
    canvas = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(min(image.shape[:2]))
    for mask, track_id, caption in zip(masks, track_ids, captions):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        x, y = int(cols[0]), int(rows[0])
        left, top, right, bottom = draw.textbbox((x, y), caption, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=tuple(int(c) for c in track_colour(track_id)))
        draw.text((x, y), caption, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


@functools.lru_cache(maxsize=8)
def _font(short_edge: int):
    """Pillow's bundled font at a size that scales with the frame (8 px at 240p, 24 px at 720p)."""
    from PIL import ImageFont

    size = int(min(32, max(8, round(short_edge / 30))))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class Mp4Writer:
    """H.264 (libx264, yuv420p) mp4 written frame by frame; sizes rounded down to even."""

    def __init__(self, path: Path, fps: Fraction, height: int, width: int, crf: int = 23):
        import av

        self.height, self.width = height - height % 2, width - width % 2
        if self.height < 2 or self.width < 2:
            raise ValueError(f"{path}: a {height}x{width} video is too small for H.264")
        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        """image uint8 (H, W, 3) RGB at the video's size (odd sizes are cropped)."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and write the index."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
            self._container = None
        self.path.unlink(missing_ok=True)
