"""Model outputs -> the official YouTube-VIS / OVIS results JSON and the CodaLab submission zip.

Results format: `[{"video_id", "category_id", "score", "segmentations": [per frame compressed RLE
{"size": [H, W], "counts": str} | null]}]`. A frame where the track is absent is written as an empty
mask (as CTVIS writes it) or as null (`absent="null"`); both evaluate the same.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from typing import Literal, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def video_results(video_id: int, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                  category_ids: Sequence[int], absent: Literal["empty", "null"] = "empty") -> list[dict]:
    """Results entries of one video.

    scores (k,) float, labels (k,) int contiguous model labels 0..K-1, masks (k, T, H, W) bool.
    category_ids[label] is the dataset category id of a model label (the caller's table)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    masks = np.asarray(masks)
    if absent not in ("empty", "null"):
        raise ValueError(f"absent must be 'empty' or 'null', got {absent!r}")
    if masks.ndim != 4 or not (len(scores) == len(labels) == len(masks)):
        raise ValueError(f"video {video_id}: expected scores (k,), labels (k,), masks (k, T, H, W); got "
                         f"{scores.shape}, {labels.shape}, {masks.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(f"video {video_id}: label {int(labels.max())} has no category id "
                         f"(table has {len(category_ids)})")
    entries = []
    for score, label, track in zip(scores.tolist(), labels.tolist(), masks):
        # pycocotools encodes (H, W, T) Fortran-ordered uint8, one RLE per frame.
        rles = mask_utils.encode(np.asfortranarray(np.moveaxis(track, 0, -1).astype(np.uint8)))
        present = track.reshape(len(track), -1).any(axis=1)
        segmentations = []
        for rle, here in zip(rles, present.tolist()):
            if absent == "null" and not here:
                segmentations.append(None)
            else:
                segmentations.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})
        entries.append({"video_id": int(video_id), "category_id": int(category_ids[label]),
                        "score": float(score), "segmentations": segmentations})
    return entries


def write_results(results: list[dict], path: str | os.PathLike) -> None:
    """Writes the results list as JSON (gzip-compressed when the name ends in .gz)."""
    from pipelines import storage

    text = json.dumps(results).encode("utf-8")
    if str(path).endswith(".gz"):
        text = gzip.compress(text, compresslevel=6)
    storage.write_bytes(os.fspath(path), text)  # atomic, never onto a link or a device


def write_submission_zip(results: list[dict], path: str | os.PathLike) -> None:
    """The CodaLab submission for YouTube-VIS 2019/2021/2022 and OVIS: results.json at the zip root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("results.json", json.dumps(results))
    from pipelines import storage

    storage.write_bytes(os.fspath(path), buffer.getvalue())
