"""The ingested form of a split: Parquet shards (one row per video) and a manifest.

Row schema (one row = one video, or one image of a COCO split; each row is its own row group, so
a reader fetches one video with one ranged read):

  video_id int64, height int32, width int32, length int32, file_names list<string>,
  frames list<binary>                    the frame files' bytes, as published (JPEG), not re-encoded
  instance_ids list<int64>               annotation ids, ascending
  category_ids list<int64>               in the split's category table (COCO: already relabelled)
  source_category_ids list<int64>        as in the source JSON
  iscrowd list<bool>
  segmentations list<list<binary>>       [instance][frame] compressed RLE counts of a (height, width)
                                         mask; null where the instance is absent in the frame
  areas list<list<double>>, bboxes list<list<list<double>>>   per frame as in the JSON (recomputed
                                         from the mask where the JSON had none); null where absent
  occlusion list<list<int8>>             OVIS occlusion code per frame (-1 null); null if none

``manifest.json`` holds the counts, categories, source (URIs + sha256 of the JSON), the shards
(path, sha256, bytes, counts), a video index (video id -> shard, row, length) and every problem
found under the ``skip`` policy.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Optional

import numpy as np

from pipelines import storage
from pipelines.data.catalog import Category

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("video_id", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("length", pa.int32()),
        ("file_names", pa.list_(pa.string())),
        ("frames", pa.list_(pa.binary())),
        ("instance_ids", pa.list_(pa.int64())),
        ("category_ids", pa.list_(pa.int64())),
        ("source_category_ids", pa.list_(pa.int64())),
        ("iscrowd", pa.list_(pa.bool_())),
        ("segmentations", pa.list_(pa.list_(pa.binary()))),
        ("areas", pa.list_(pa.list_(pa.float64()))),
        ("bboxes", pa.list_(pa.list_(pa.list_(pa.float64())))),
        ("occlusion", pa.list_(pa.list_(pa.int8()))),
    ])


def encode_table(rows: list[dict]) -> bytes:
    """Parquet bytes of `rows`, one row group per row (no compression: JPEG and RLE do not shrink)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=arrow_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1, compression="none", write_statistics=False)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Manifest:
    uri: str  # the shards directory
    split: str
    kind: str  # "video" | "image"
    categories: tuple[Category, ...]
    shard_paths: tuple[str, ...]  # relative to uri
    video_ids: np.ndarray  # int64 (V,)
    shard_index: np.ndarray  # int32 (V,)
    row_index: np.ndarray  # int32 (V,)
    lengths: np.ndarray  # int32 (V,)
    raw: dict

    @property
    def num_videos(self) -> int:
        return int(self.video_ids.shape[0])

    def shard_uri(self, shard: int) -> str:
        return storage.join(self.uri, self.shard_paths[shard])


def load_manifest(uri: str) -> Manifest:
    """Read `uri`/manifest.json (or a manifest URI itself)."""
    manifest_uri = uri if uri.endswith(".json") else storage.join(uri, MANIFEST_NAME)
    base = uri.rsplit("/", 1)[0] if uri.endswith(".json") else uri
    try:
        raw = storage.read_json(manifest_uri)
    except storage.StorageNotFound:
        raise FileNotFoundError(f"{storage.redact(manifest_uri)}: no manifest; run `ctvis data ingest` for this split first") from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{storage.redact(manifest_uri)}: format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    index = raw["video_index"]
    return Manifest(
        uri=base,
        split=raw["split"],
        kind=raw["kind"],
        categories=tuple(Category(int(c["id"]), str(c["name"])) for c in raw["categories"]),
        shard_paths=tuple(s["path"] for s in raw["shards"]),
        video_ids=np.asarray(index["video_id"], dtype=np.int64),
        shard_index=np.asarray(index["shard"], dtype=np.int32),
        row_index=np.asarray(index["row"], dtype=np.int32),
        lengths=np.asarray(index["length"], dtype=np.int32),
        raw=raw,
    )


class ShardReader:
    """Random access to single video rows; keeps each shard's Parquet footer open (one per process)."""

    def __init__(self, columns: Optional[list[str]] = None, max_open: int = 64):
        self.columns = columns
        self.max_open = max_open
        self._files: dict[str, Any] = {}

    def read(self, shard_uri: str, row: int) -> dict[str, Any]:
        pf = self._files.get(shard_uri)
        if pf is None:
            import pyarrow.parquet as pq

            fs, path = storage.pyarrow_filesystem(shard_uri)
            if len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files)))
            try:
                pf = pq.ParquetFile(fs.open_input_file(path))
            except FileNotFoundError:
                raise FileNotFoundError(f"{storage.redact(shard_uri)}: shard not found") from None
            except OSError as exc:  # storage unreachable after its retries (storage.RetryPolicy)
                raise storage.failure(shard_uri, "open", exc) from None
            self._files[shard_uri] = pf
        if not 0 <= row < pf.metadata.num_row_groups:
            raise IndexError(f"{storage.redact(shard_uri)}: row {row} out of range ({pf.metadata.num_row_groups} rows)")
        try:
            table = pf.read_row_group(row, columns=self.columns)
        except OSError as exc:
            self._files.pop(shard_uri, None)
            raise storage.failure(shard_uri, f"read row {row}", exc) from None
        return {name: table.column(name)[0].as_py() for name in table.column_names}


def iter_rows(manifest: Manifest, columns: Optional[list[str]] = None):
    """Every row of every shard, in shard order (whole shards, for export and checks)."""
    import pyarrow.parquet as pq

    for shard in range(len(manifest.shard_paths)):
        uri = manifest.shard_uri(shard)
        fs, path = storage.pyarrow_filesystem(uri)
        try:
            table = pq.read_table(path, filesystem=fs, columns=columns)
        except FileNotFoundError:
            raise FileNotFoundError(f"{storage.redact(uri)}: shard not found") from None
        except OSError as exc:
            raise storage.failure(uri, "read", exc) from None
        yield from table.to_pylist()


def export_ytvis_json(manifest: Manifest) -> dict:
    """The split back in YouTube-VIS JSON form (compressed RLE strings), from the shards alone."""
    from pipelines.data.formats import OCCLUSION_NAMES

    videos, annotations = [], []
    columns = [f.name for f in arrow_schema() if f.name != "frames"]
    for row in iter_rows(manifest, columns):
        h, w, n = row["height"], row["width"], row["length"]
        videos.append({"id": row["video_id"], "width": w, "height": h, "length": n, "file_names": row["file_names"]})
        for k, aid in enumerate(row["instance_ids"]):
            ann = {
                "id": aid, "video_id": row["video_id"], "category_id": row["category_ids"][k],
                "iscrowd": int(row["iscrowd"][k]), "height": h, "width": w, "length": n,
                "segmentations": [{"size": [h, w], "counts": c.decode("ascii")} if c is not None else None
                                  for c in row["segmentations"][k]],
                "areas": row["areas"][k],
                "bboxes": row["bboxes"][k],
            }
            if row["occlusion"] is not None and row["occlusion"][k] is not None:
                ann["occlusion"] = [OCCLUSION_NAMES.get(o) for o in row["occlusion"][k]]
            annotations.append(ann)
    categories = [{"id": c.id, "name": c.name} for c in manifest.categories]
    return {"videos": videos, "annotations": annotations, "categories": categories}
