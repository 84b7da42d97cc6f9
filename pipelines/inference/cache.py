"""The output cache: per video, what the tracker and the post-processing need from the network.

``<cache>/cache.json`` says what made the cache (format, model URI, the resolved experiment as
YAML, split, mask dtype); ``<cache>/videos/<video id>.parquet`` holds one video, one row per clip
the network ran on: ``num_frames``, then the raw bytes of the clip's class logits (t, Q, K+1)
float32, mask logits (t, Q, h, w) float16 and re-id embeddings (t, Q, C) float32; the Parquet
schema metadata (key ``ctvis``) holds the shapes and the sizes (padded, image, output).

The run that writes the cache hands the tracker exactly the values it stores (mask logits rounded
to float16), so a re-run from the cache (`ctvis predict --from-cache`) gives its results bit for
bit, with the tracker or post-processing options changed or not. Only the network is skipped.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np
import torch

from models.frame_outputs import FrameOutputs
from pipelines import storage

CACHE_FORMAT = "ctvis-output-cache-v1"
CACHE_MANIFEST = "cache.json"
MASK_DTYPE = np.float16
_METADATA_KEY = b"ctvis"


class CacheError(ValueError):
    """An output cache that cannot be used; the message names the file."""


def video_cache_uri(cache_uri: str, video_id: int) -> str:
    return storage.join(cache_uri, "videos", f"{int(video_id):012d}.parquet")


class OutputRecorder:
    """``CTVISModel.infer_video(on_network_outputs=...)`` hook: keeps each clip's outputs as the cache
    stores them and returns those very values to the tracker (see the module notes)."""

    def __init__(self):
        self.clips: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, outputs: FrameOutputs) -> FrameOutputs:
        logits = outputs.logits.float()
        masks = outputs.masks.to(torch.float16)
        embeds = outputs.embeds.float()
        self.clips.append((logits.cpu().numpy(), masks.cpu().numpy(), embeds.cpu().numpy()))
        return FrameOutputs(logits=logits, masks=masks.float(), queries=outputs.queries, embeds=embeds)

    def encode(self, video_id: int, padded_size: tuple[int, int], image_size: tuple[int, int],
               output_size: tuple[int, int]) -> bytes:
        """The video's cache file (Parquet bytes)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.clips:
            raise ValueError(f"video {video_id}: no network outputs were recorded")
        logits, masks, embeds = self.clips[0]
        metadata = {"format": CACHE_FORMAT, "video_id": int(video_id), "num_queries": int(logits.shape[1]),
                    "num_logits": int(logits.shape[2]), "embed_dim": int(embeds.shape[2]),
                    "mask_size": [int(v) for v in masks.shape[2:]], "padded_size": [int(v) for v in padded_size],
                    "image_size": [int(v) for v in image_size], "output_size": [int(v) for v in output_size]}
        table = pa.table({
            "num_frames": pa.array([clip[0].shape[0] for clip in self.clips], pa.int32()),
            "logits": pa.array([np.ascontiguousarray(clip[0], np.float32).tobytes() for clip in self.clips], pa.binary()),
            "masks": pa.array([np.ascontiguousarray(clip[1], MASK_DTYPE).tobytes() for clip in self.clips], pa.binary()),
            "embeds": pa.array([np.ascontiguousarray(clip[2], np.float32).tobytes() for clip in self.clips], pa.binary()),
        }).replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", row_group_size=len(self.clips))
        return buffer.getvalue()


@dataclasses.dataclass
class CachedVideo:
    video_id: int
    clips: list[FrameOutputs]  # float32 tensors on the CPU (queries: empty)
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    output_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return sum(clip.num_frames for clip in self.clips)


def read_cached_video(uri: str) -> CachedVideo:
    import pyarrow.parquet as pq

    name = storage.redact(uri)
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except storage.StorageNotFound:
        raise CacheError(f"{name}: not in the cache (was the video cached? run with --cache-outputs first)") from None
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        if isinstance(error, storage.StorageError):
            raise
        raise CacheError(f"{name}: not a readable cache file ({type(error).__name__}: {error})") from None
    raw = (table.schema.metadata or {}).get(_METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{name}: format {meta.get('format')!r}, expected {CACHE_FORMAT}")
    queries, num_logits, embed_dim = meta["num_queries"], meta["num_logits"], meta["embed_dim"]
    height, width = meta["mask_size"]
    clips = []
    columns = table.to_pydict()
    for index, frames in enumerate(columns["num_frames"]):
        try:
            logits = np.frombuffer(columns["logits"][index], np.float32).reshape(frames, queries, num_logits)
            masks = np.frombuffer(columns["masks"][index], MASK_DTYPE).reshape(frames, queries, height, width)
            embeds = np.frombuffer(columns["embeds"][index], np.float32).reshape(frames, queries, embed_dim)
        except ValueError:
            raise CacheError(f"{name}: clip {index} does not have the shapes its metadata gives (truncated?)") from None
        clips.append(FrameOutputs(logits=torch.from_numpy(logits.copy()),
                                  masks=torch.from_numpy(masks.astype(np.float32)),
                                  queries=torch.zeros(frames, queries, 0), embeds=torch.from_numpy(embeds.copy())))
    return CachedVideo(int(meta["video_id"]), clips, tuple(meta["padded_size"]), tuple(meta["image_size"]),
                       tuple(meta["output_size"]))


def write_cache_manifest(cache_uri: str, info: dict[str, Any]) -> None:
    storage.write_json(storage.join(cache_uri, CACHE_MANIFEST), {"format": CACHE_FORMAT, **info}, indent=1)


def read_cache_manifest(cache_uri: str) -> dict[str, Any]:
    uri = storage.join(cache_uri, CACHE_MANIFEST)
    try:
        info = storage.read_json(uri)
    except storage.StorageNotFound:
        raise CacheError(f"{storage.redact(uri)}: no output cache here (make one with ctvis predict "
                         f"--cache-outputs {storage.redact(cache_uri)})") from None
    if info.get("format") != CACHE_FORMAT:
        raise CacheError(f"{storage.redact(uri)}: format {info.get('format')!r}, expected {CACHE_FORMAT}")
    return info
