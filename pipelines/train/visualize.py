"""Pictures for the MLflow run, drawn with Pillow alone (matplotlib is not a dependency).

- `overlay_strip`: a validation video's frames side by side, each predicted instance's mask blended
  in its track's colour with its track id and score written at the mask's top-left corner;
- `loss_curve_plot`: the loss terms against the step, one coloured line each, with a legend.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

# distinct, saturated colours; track i gets PALETTE[i % len(PALETTE)]
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
], dtype=np.float32)


def overlay_strip(frames: np.ndarray, masks: np.ndarray, track_ids: Sequence[int], scores: Sequence[float],
                  labels: Sequence[str], max_frames: int = 8, alpha: float = 0.55, min_height: int = 192) -> bytes:
    """PNG bytes of up to `max_frames` evenly spaced frames with the instances drawn over them.

    Frames smaller than `min_height` are enlarged by an integer factor (nearest neighbour) first,
    so that the ids stay legible on small videos.

    frames: uint8 (T,H,W,3); masks: bool (k,T,H,W) at the frames' size; track_ids, scores, labels:
    (k,) the track each mask belongs to (its colour), its score and its class name.
    """
    from PIL import Image, ImageDraw

    scale = max(1, -(-min_height // frames.shape[1]))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        masks = masks.repeat(scale, axis=2).repeat(scale, axis=3)
    T, H, W, _ = frames.shape
    chosen = np.unique(np.linspace(0, T - 1, num=min(max_frames, T)).round().astype(np.int64))
    colours = PALETTE[np.asarray(track_ids, dtype=np.int64) % len(PALETTE)] if len(track_ids) else np.zeros((0, 3))
    tiles = []
    for t in chosen:
        tile = frames[t].astype(np.float32)
        if len(masks):
            on = masks[:, t]  # (k,H,W)
            # later (lower-score) entries do not repaint pixels an earlier entry already claimed
            claimed = np.cumsum(on, axis=0) == 1
            paint = on & claimed
            colour_map = np.einsum("khw,kc->hwc", paint.astype(np.float32), colours)
            painted = paint.any(axis=0)[..., None]
            tile = np.where(painted, (1 - alpha) * tile + alpha * colour_map, tile)
        image = Image.fromarray(tile.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for k in range(len(masks)):
            ys, xs = np.nonzero(masks[k, t])
            if len(ys):
                text = f"#{int(track_ids[k])} {labels[k]} {float(scores[k]):.2f}"
                x, y = int(xs.min()), max(int(ys.min()) - 10, 0)
                draw.text((x + 1, y + 1), text, fill=(0, 0, 0))
                draw.text((x, y), text, fill=tuple(int(c) for c in colours[k]))
        draw.text((3, 3), f"t={int(t)}", fill=(255, 255, 255))
        tiles.append(image)
    strip = Image.new("RGB", (W * len(tiles) + 2 * (len(tiles) - 1), H), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (W + 2), 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def loss_curve_plot(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], title: str = "training losses",
                    size: tuple[int, int] = (900, 520), log_scale: bool = True) -> bytes:
    """PNG bytes of the curves {name: (steps, values)} on shared axes (log-scaled values by default)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 190, 40, 50
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill=(0, 0, 0))
    series = {name: (np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64))
              for name, (s, v) in curves.items() if len(s)}
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(0, 0, 0))
    if not series:
        draw.text((left + 10, top + 10), "no data", fill=(0, 0, 0))
    else:
        all_steps = np.concatenate([s for s, _ in series.values()])
        all_values = np.concatenate([v for _, v in series.values()])
        use_log = log_scale and bool((all_values > 0).all())

        def transform(v: np.ndarray) -> np.ndarray:
            return np.log10(v) if use_log else v

        x0, x1 = float(all_steps.min()), float(all_steps.max())
        y_all = transform(all_values[np.isfinite(all_values)])
        y0, y1 = float(y_all.min()), float(y_all.max())
        x1 = x1 if x1 > x0 else x0 + 1
        y1 = y1 if y1 > y0 else y0 + 1

        def to_px(steps: np.ndarray, values: np.ndarray) -> list[tuple[float, float]]:
            xs = left + (steps - x0) / (x1 - x0) * plot_w
            ys = top + plot_h - (transform(values) - y0) / (y1 - y0) * plot_h
            return list(zip(xs.tolist(), ys.tolist()))

        for i in range(5):  # y ticks
            frac = i / 4
            value = y0 + frac * (y1 - y0)
            y = top + plot_h - frac * plot_h
            draw.line((left - 4, y, left, y), fill=(0, 0, 0))
            draw.text((4, y - 6), f"{10 ** value:.3g}" if use_log else f"{value:.3g}", fill=(0, 0, 0))
        for i in range(5):  # x ticks
            frac = i / 4
            x = left + frac * plot_w
            draw.line((x, top + plot_h, x, top + plot_h + 4), fill=(0, 0, 0))
            draw.text((x - 10, top + plot_h + 8), f"{x0 + frac * (x1 - x0):.0f}", fill=(0, 0, 0))
        draw.text((left + plot_w // 2 - 10, height - 20), "step", fill=(0, 0, 0))
        for i, (name, (steps, values)) in enumerate(series.items()):
            order = np.argsort(steps, kind="stable")
            colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
            points = to_px(steps[order], values[order])
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            else:
                x, y = points[0]
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            ly = top + 14 * i
            draw.line((left + plot_w + 10, ly + 6, left + plot_w + 30, ly + 6), fill=colour, width=3)
            draw.text((left + plot_w + 35, ly), name, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
