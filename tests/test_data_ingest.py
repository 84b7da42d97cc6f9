"""Ingest: broken inputs (fail names the file / video / frame, skip counts it), resumption, and a
YouTube-VIS JSON round trip through the shards with identical masks."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image
from pycocotools import mask as mask_util

from pipelines import storage
from pipelines.data import catalog, shards, synth
from pipelines.data.formats import DataFormatError
from pipelines.data.ingest import IngestOptions, ingest

LOCAL = IngestOptions(executor="local", shard_mb=0.004, io_threads=4)  # ~1 video per shard here


@pytest.fixture
def raw_split(tmp_path):
    cfg = synth.SynthConfig(num_videos=3, min_frames=4, max_frames=4, height=32, width=40, num_classes=2, seed=3)
    summary = synth.generate(str(tmp_path / "raw"), cfg)
    return catalog.resolve_split("synth_train", annotations=summary["annotations"], frames_root=summary["frames_root"])


def _edit_json(info, fn):
    data = json.loads(storage.read_text(info.annotations))
    fn(data)
    storage.write_json(info.annotations, data)


def test_clean_ingest_counts_and_checksums(raw_split, tmp_path):
    out = str(tmp_path / "shards")
    manifest = ingest(raw_split, out, LOCAL)
    assert manifest["num_videos"] == 3 and manifest["num_frames"] == 12
    assert manifest["problem_counts"] == {} and manifest["problems"] == []
    assert manifest["num_shards"] >= 2  # small shard target: several shards
    loaded = shards.load_manifest(out)
    assert loaded.video_ids.tolist() == [1, 2, 3] and loaded.lengths.tolist() == [4, 4, 4]
    import hashlib

    for s in manifest["shards"]:
        assert hashlib.sha256(storage.read_bytes(os.path.join(out, s["path"]))).hexdigest() == s["sha256"]
    row = shards.ShardReader().read(loaded.shard_uri(int(loaded.shard_index[1])), int(loaded.row_index[1]))
    assert row["video_id"] == 2 and len(row["frames"]) == 4
    raw_frame = storage.read_bytes(os.path.join(raw_split.frames_root, row["file_names"][0]))
    assert row["frames"][0] == raw_frame  # frames stored as published, not re-encoded


def _break_frame(info, kind):
    data = json.loads(storage.read_text(info.annotations))
    name = data["videos"][1]["file_names"][2]
    path = os.path.join(info.frames_root, name)
    if kind == "missing_frame":
        os.remove(path)
    elif kind == "corrupt_frame":
        with open(path, "rb") as f:
            head = f.read(200)
        with open(path, "wb") as f:
            f.write(head)  # truncated JPEG
    elif kind == "frame_size_mismatch":
        Image.new("RGB", (20, 10)).save(path, format="JPEG")
    return path


@pytest.mark.parametrize("kind, words", [
    ("missing_frame", "frame file not found"),
    ("corrupt_frame", "cannot decode the image"),
    ("frame_size_mismatch", "image is 20x10 (WxH) but the JSON says 40x32"),
])
def test_broken_frames_fail_naming_file_video_frame_or_are_skipped(raw_split, tmp_path, kind, words):
    path = _break_frame(raw_split, kind)
    with pytest.raises(DataFormatError) as err:
        ingest(raw_split, str(tmp_path / "fail"), LOCAL)
    assert f"{path}: video 2 frame 2: {words}" in str(err.value)
    manifest = ingest(raw_split, str(tmp_path / "skip"), IngestOptions(executor="local", on_error="skip"))
    assert manifest["problem_counts"] == {kind: 1}
    problem = manifest["problems"][0]
    assert (problem["video_id"], problem["frame"], problem["file"]) == (2, 2, path)
    assert manifest["num_videos"] == 2 and shards.load_manifest(str(tmp_path / "skip")).video_ids.tolist() == [1, 3]


@pytest.mark.parametrize("kind, edit, words", [
    ("segmentation_count_mismatch", lambda d: d["annotations"][0]["segmentations"].pop(), "segmentations for a video of 4 frames"),
    ("unknown_video", lambda d: d["annotations"][0].update(video_id=404), "refers to unknown video id 404"),
    ("unknown_category", lambda d: d["annotations"][0].update(category_id=77), "has unknown category id 77"),
])
def test_broken_annotations_fail_naming_json_and_annotation_or_are_skipped(raw_split, tmp_path, kind, edit, words):
    _edit_json(raw_split, edit)
    with pytest.raises(DataFormatError, match=f"{raw_split.annotations}: annotation 1 .*{words}"):
        ingest(raw_split, str(tmp_path / "fail"), LOCAL)
    manifest = ingest(raw_split, str(tmp_path / "skip"), IngestOptions(executor="local", on_error="skip"))
    assert manifest["problem_counts"] == {kind: 1}
    assert manifest["problems"][0]["annotation_id"] == 1
    data = json.loads(storage.read_text(raw_split.annotations))
    assert manifest["num_instances"] == len(data["annotations"]) - 1  # only that annotation is left out
    assert manifest["num_videos"] == 3


def test_invalid_segmentation_is_named_or_skipped(raw_split, tmp_path):
    _edit_json(raw_split, lambda d: d["annotations"][0]["segmentations"].__setitem__(
        next(i for i, s in enumerate(d["annotations"][0]["segmentations"]) if s), {"size": [9, 9], "counts": "00"}))
    with pytest.raises(DataFormatError, match=f"{raw_split.annotations}: video 1 annotation 1 frame [0-9]: invalid "
                       "segmentation .*differs from the frame size"):
        ingest(raw_split, str(tmp_path / "fail"), LOCAL)
    manifest = ingest(raw_split, str(tmp_path / "skip"), IngestOptions(executor="local", on_error="skip"))
    assert manifest["problem_counts"] == {"invalid_segmentation": 1}


def test_ingest_resumes_finished_shards(raw_split, tmp_path):
    out = str(tmp_path / "shards")
    path = _break_frame(raw_split, "missing_frame")  # video 2: its shard fails, the earlier one is done
    with pytest.raises(DataFormatError):
        ingest(raw_split, out, LOCAL)
    done = sorted(os.listdir(os.path.join(out, "_progress")))
    assert done == ["part-00000.json"]
    first_shard = os.path.join(out, "part-00000.parquet")
    mtime = os.stat(first_shard).st_mtime_ns
    Image.new("RGB", (40, 32), (9, 9, 9)).save(path, format="JPEG")  # repair the input
    manifest = ingest(raw_split, out, LOCAL)
    assert manifest["resumed_shards"] == 1 and manifest["num_videos"] == 3
    assert os.stat(first_shard).st_mtime_ns == mtime  # not redone
    again = ingest(raw_split, out, LOCAL)
    assert again["resumed_shards"] == again["num_shards"]
    assert again["shards"] == manifest["shards"]
    # a changed source invalidates the plan: everything is redone
    _edit_json(raw_split, lambda d: d["annotations"].pop())
    changed = ingest(raw_split, out, LOCAL)
    assert changed["resumed_shards"] == 0 and changed["num_instances"] == manifest["num_instances"] - 1


def _write_frames(data, root):
    for v in data["videos"]:
        for name in v["file_names"]:
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (v["width"], v["height"]), (40, 80, 120)).save(p, format="JPEG")


def _compressed(segm, h, w):
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, h, w))["counts"].decode()
    if isinstance(segm["counts"], list):
        return mask_util.frPyObjects(segm, h, w)["counts"].decode()
    return segm["counts"]


@pytest.mark.parametrize("case", ["c_edge_cases", "e_official_quirks", "b_ovis_like"])
def test_ytvis_json_round_trips_with_identical_masks(reference_dir, tmp_path, case):
    data = json.loads((reference_dir / "eval" / case / "gt.json").read_text())
    if case == "b_ovis_like":  # keep it small: two videos
        keep = {v["id"] for v in data["videos"][:2]}
        data["videos"] = [v for v in data["videos"] if v["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["video_id"] in keep]
    (tmp_path / "gt.json").write_text(json.dumps(data))
    _write_frames(data, tmp_path / "frames")
    info = catalog.resolve_split(case, annotations=str(tmp_path / "gt.json"), frames_root=str(tmp_path / "frames"))
    ingest(info, str(tmp_path / "shards"), IngestOptions(executor="local"))
    back = shards.export_ytvis_json(shards.load_manifest(str(tmp_path / "shards")))

    assert sorted(v["id"] for v in back["videos"]) == sorted(v["id"] for v in data["videos"])
    videos = {v["id"]: v for v in data["videos"]}
    assert [v["file_names"] for v in back["videos"]] == [videos[v["id"]]["file_names"] for v in back["videos"]]
    original = {a["id"]: a for a in data["annotations"]}
    assert sorted(original) == sorted(a["id"] for a in back["annotations"])
    for ann in back["annotations"]:
        src = original[ann["id"]]
        h, w = videos[src["video_id"]]["height"], videos[src["video_id"]]["width"]
        assert (ann["video_id"], ann["category_id"], ann["iscrowd"]) == (src["video_id"], src["category_id"], src["iscrowd"])
        for t, (got, want) in enumerate(zip(ann["segmentations"], src["segmentations"])):
            if want is None:
                assert got is None
                continue
            assert got["size"] == [h, w]
            assert got["counts"] == _compressed(want, h, w), (ann["id"], t)  # RLE equality
            assert ann["areas"][t] == src["areas"][t] and ann["bboxes"][t] == src["bboxes"][t]
        if "occlusion" in src:
            assert ann["occlusion"] == src["occlusion"]


def test_impossible_bboxes_fail_naming_the_frame_or_are_replaced_under_skip(raw_split, tmp_path):
    def breaking(data):
        ann = data["annotations"][0]
        ann["bboxes"] = [[0.0, 0.0, 10.0, 10.0]] * len(ann["segmentations"])
        ann["bboxes"][1] = [30.0, 5.0, 500.0, -3.0]  # past the 40-pixel width, negative height
    _edit_json(raw_split, breaking)
    data = json.loads(storage.read_text(raw_split.annotations))
    ann = data["annotations"][0]
    with pytest.raises(DataFormatError, match=f"video {ann['video_id']} annotation {ann['id']} frame 1: bbox"):
        ingest(raw_split, str(tmp_path / "fail"), LOCAL)
    manifest = ingest(raw_split, str(tmp_path / "skip"), IngestOptions(executor="local", on_error="skip"))
    assert manifest["problem_counts"] == {"invalid_bbox": 1}
    loaded = shards.load_manifest(str(tmp_path / "skip"))
    position = loaded.video_ids.tolist().index(ann["video_id"])
    row = shards.ShardReader().read(loaded.shard_uri(int(loaded.shard_index[position])), int(loaded.row_index[position]))
    box = row["bboxes"][row["instance_ids"].index(ann["id"])][1]
    assert 0 <= box[0] and box[0] + box[2] <= 40 and box[3] >= 0  # the mask's own box instead


def test_reingesting_with_another_shard_size_leaves_only_the_manifests_shards(raw_split, tmp_path):
    out = str(tmp_path / "shards")
    many = ingest(raw_split, out, LOCAL)
    one = ingest(raw_split, out, IngestOptions(executor="local", shard_mb=64))
    assert many["num_shards"] >= 2 and one["num_shards"] == 1
    assert sorted(p for p in os.listdir(out) if p.endswith(".parquet")) == [s["path"] for s in one["shards"]]
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(os.path.join(out, p)).num_rows for p in os.listdir(out) if p.endswith(".parquet"))
    assert rows == 3  # a reader of the directory's shards sees each video once
