"""The fast text readers (results list cuts, GT frame cuts, bulk frame table) give exactly what a plain
json parse gives, take the fast path on the usual layouts and fall back, still correct, on others."""
from __future__ import annotations

import copy
import gzip
import json

import numpy as np
import pytest

from pipelines.evaluation import data
from pipelines.evaluation.data import InputError, load_ground_truth, load_predictions, predictions_from_list
from pipelines.evaluation.metrics import evaluate
from pipelines.evaluation.rle import FRAME_PATTERN, FrameTable
from tests.eval_synthetic import SyntheticCaseConfig, make_synthetic_case


@pytest.fixture(scope="module")
def case():
    config = SyntheticCaseConfig(num_videos=5, min_frames=4, max_frames=7, height=40, width=56,
                                 num_categories=4, min_gt_tracks=2, max_gt_tracks=4,
                                 min_predictions=6, max_predictions=20, seed=3)
    ground_truth, results = make_synthetic_case(config)
    gt = load_ground_truth(ground_truth)
    return ground_truth, results, gt, evaluate(gt, predictions_from_list(copy.deepcopy(results))).stats


def _used_fast_path(raw: bytes) -> bool:
    return data._load_predictions_fast(raw, "x") is not None


def test_top_k_entries_share_one_track(case):
    _, results, _, _ = case
    raw = json.dumps(results).encode()
    preds = load_predictions(raw)
    distinct = {json.dumps(entry["segmentations"]) for entry in results}
    assert len(preds.track_offsets) - 1 == len(distinct) < len(results)
    # Entry frames expand back to exactly the per-entry lists (null -> -1, masks by counts string).
    offsets, frame_ids = preds.frame_offsets, preds.frame_ids
    for r, entry in enumerate(results):
        frames = frame_ids[offsets[r]:offsets[r + 1]]
        assert len(frames) == len(entry["segmentations"])
        for frame, value in zip(frames.tolist(), entry["segmentations"]):
            if value is None:
                assert frame == -1
            else:
                assert preds.table.counts[frame] == value["counts"].encode()
                assert (preds.table.heights[frame], preds.table.widths[frame]) == tuple(value["size"])


@pytest.mark.parametrize("layout", ["usual", "compact", "segmentations_first", "trailing_nulls",
                                    "empty_lists", "counts_first", "extra_list_key"])
def test_results_layouts_read_the_same(case, layout):
    _, results, gt, expected = case
    entries = copy.deepcopy(results)
    fast = layout not in ("counts_first", "extra_list_key")
    if layout == "segmentations_first":
        entries = [{"segmentations": e["segmentations"], "score": e["score"], "video_id": e["video_id"],
                    "category_id": e["category_id"]} for e in entries]
    elif layout == "trailing_nulls":  # lists ending in null, the last entry's too
        for entry in entries[-3:]:
            entry["segmentations"] = entry["segmentations"][:-1] + [None]
    elif layout == "empty_lists":
        entries[0]["segmentations"] = []
        entries[-1]["segmentations"] = []
    elif layout == "counts_first":
        for entry in entries:
            entry["segmentations"] = [None if s is None else {"counts": s["counts"], "size": s["size"]}
                                      for s in entry["segmentations"]]
    elif layout == "extra_list_key":  # another list after the segmentations
        for entry in entries:
            entry["boxes"] = [[1, 2]]
    raw = json.dumps(entries, separators=(",", ":") if layout == "compact" else None).encode()
    assert _used_fast_path(raw) == fast
    want = expected if layout in ("usual", "compact", "segmentations_first", "counts_first", "extra_list_key") \
        else evaluate(gt, predictions_from_list(entries)).stats
    np.testing.assert_array_equal(evaluate(gt, load_predictions(raw)).stats, want)


def test_escaped_counts_and_gzip_members(case, tmp_path):
    _, results, gt, expected = case
    raw = json.dumps(results).encode()
    assert b"\\\\" in raw  # RLE strings hold backslashes, which JSON escapes
    # A \u escape in a counts string is unusual but valid JSON: same masks.
    escaped = raw.replace(b'"counts": "', b'"counts": "\\u00', 1)
    first = raw.index(b'"counts": "') + len(b'"counts": "')
    escaped = raw[:first] + b"\\u00%x" % raw[first] + raw[first + 1:]
    np.testing.assert_array_equal(evaluate(gt, load_predictions(escaped)).stats, expected)
    # Two concatenated gzip members are one file, as for gzip.decompress.
    half = len(raw) // 2
    path = tmp_path / "results.json.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(evaluate(gt, load_predictions(path)).stats, expected)
    path.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(InputError, match="corrupt gzip"):
        load_predictions(path)


def test_background_read_reports_errors_with_the_file_name(tmp_path):
    future = data.read_bytes_in_background(tmp_path / "missing.json.gz")
    with pytest.raises(InputError, match="missing.json.gz: no such file"):
        future.result()
    (tmp_path / "bad.json").write_bytes(b'[{"video_id": 1, "category_id": 1, "segmentations": []}]')
    with pytest.raises(InputError, match=r"bad.json: entry 0 .*score"):
        load_predictions(data.read_bytes_in_background(tmp_path / "bad.json").result(),
                         name=str(tmp_path / "bad.json"))


def test_ground_truth_text_equals_ground_truth_dict(case, tmp_path, monkeypatch):
    ground_truth, results, gt, expected = case
    variant = copy.deepcopy(ground_truth)
    # An unlisted video's annotation (skipped, its frames still cut out) and an uncompressed-RLE frame.
    stray = copy.deepcopy(variant["annotations"][0])
    stray.update(id=10_000, video_id=999)
    variant["annotations"].insert(1, stray)
    ann = variant["annotations"][2]
    t = next(i for i, s in enumerate(ann["segmentations"]) if s)
    from pycocotools import mask as mask_utils
    dense = mask_utils.decode({"size": ann["segmentations"][t]["size"],
                               "counts": ann["segmentations"][t]["counts"].encode()})
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(np.concatenate([[0], dense.ravel(order="F"),
                                                                              [2]]))), ]))
    ann["segmentations"][t] = {"size": list(dense.shape), "counts": runs.tolist()}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(variant))
    build, layouts = data._build_ground_truth, []
    monkeypatch.setattr(data, "_build_ground_truth", lambda name, dataset, table, matched: (
        layouts.append(matched is not None), build(name, dataset, table, matched))[1])
    from_text = load_ground_truth(path)
    assert layouts == [True]  # the frame cuts lined up: no second, plain parse
    from_text, from_dict = load_ground_truth(path), load_ground_truth(copy.deepcopy(variant))
    for name in ("ann_ids", "ann_video", "ann_avg_area", "frame_offsets"):
        np.testing.assert_array_equal(getattr(from_text, name), getattr(from_dict, name))
    text_frames, dict_frames = from_text.frame_ids, from_dict.frame_ids
    np.testing.assert_array_equal(text_frames < 0, dict_frames < 0)
    present = text_frames >= 0
    np.testing.assert_array_equal(from_text.table.areas[text_frames[present]],
                                  from_dict.table.areas[dict_frames[present]])
    preds = predictions_from_list(copy.deepcopy(results))
    np.testing.assert_array_equal(evaluate(from_text, preds).stats, evaluate(from_dict, preds).stats)
    np.testing.assert_array_equal(evaluate(load_ground_truth(ground_truth), preds).stats, expected)


def test_frame_table_bulk_add_dedups_per_size_and_rejects_escaped_quotes():
    text = (b'[{"size": [2, 2], "counts": "04"}, {"size": [4, 1], "counts": "04"}, '
            b'{"size": [2, 2], "counts": "04"}, {"size": [3, 4], "counts": "\\\\0"}]')  # valid RLEs
    parts = FRAME_PATTERN.split(text)
    table = FrameTable()
    ids = table.add_many(parts[1::4], parts[2::4], parts[3::4])
    assert ids.tolist() == [0, 1, 0, 2]  # the same counts under another size is another mask
    assert table.counts == [b"04", b"04", b"\\0"]  # a 12-pixel run: '\\' is a continuation character
    assert table.finalize().heights.tolist() == [2, 4, 3]
    quoted = b'[{"size": [2, 2], "counts": "ab\\"}, "x"}]'  # the pattern stops at the escaped quote
    parts = FRAME_PATTERN.split(quoted)
    assert FrameTable().add_many(parts[1::4], parts[2::4], parts[3::4]) is None


def test_ground_truth_from_background_bytes_equals_from_path(case, tmp_path):
    ground_truth, results, _, expected = case
    path = tmp_path / "gt.json.gz"
    path.write_bytes(gzip.compress(json.dumps(ground_truth).encode()))
    from_bytes = load_ground_truth(data.read_bytes_in_background(path).result(), name=str(path))
    from_path = load_ground_truth(path)
    assert from_bytes.source == from_path.source == str(path)
    for name in ("ann_ids", "ann_avg_area", "frame_offsets", "frame_ids"):
        np.testing.assert_array_equal(getattr(from_bytes, name), getattr(from_path, name))
    np.testing.assert_array_equal(from_bytes.table.areas, from_path.table.areas)
    preds = predictions_from_list(copy.deepcopy(results))
    np.testing.assert_array_equal(evaluate(from_bytes, preds).stats, expected)
    with pytest.raises(InputError, match="gt.json.gz: missing list 'videos'"):
        load_ground_truth(b'{"categories": []}', name=str(path))


def test_frame_table_bulk_add_without_dedup_keeps_every_frame_and_measures_areas():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    masks = [(rng.random((5, 7)) < p).astype(np.uint8) for p in (0.0, 0.3, 0.3, 1.0)]
    masks[2] = masks[1]  # a repeated mask stays a separate frame without de-duplication
    encoded = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    text = json.dumps([{"size": e["size"], "counts": e["counts"].decode()} for e in encoded]).encode()
    parts = FRAME_PATTERN.split(text)
    table = FrameTable()
    assert table.add_many(parts[1::4], parts[2::4], parts[3::4], deduplicate=False).tolist() == [0, 1, 2, 3]
    table.finalize()
    # Areas do not depend on the size pycocotools is given (the table measures with a shared one).
    assert table.areas.tolist() == [int(m.sum()) for m in masks]
    assert table.heights.tolist() == [5] * 4 and table.widths.tolist() == [7] * 4


@pytest.mark.parametrize("areas", [[True, 4], [float("nan")], [None, float("inf")], ["12"], 5, [[3]]])
def test_ground_truth_rejects_bad_areas_naming_the_annotation(areas):
    dataset = {"videos": [{"id": 1, "height": 2, "width": 2, "length": 2}], "categories": [{"id": 1}],
               "annotations": [{"id": 7, "video_id": 1, "category_id": 1, "segmentations": [None, None],
                                "areas": areas}]}
    with pytest.raises(InputError, match=r"annotations\[0\] \(id 7\): 'areas' must be a list of numbers"):
        load_ground_truth(dataset)


def test_ground_truth_mean_area_skips_nulls_and_zeros():
    dataset = {"videos": [{"id": 1, "height": 2, "width": 2, "length": 4}], "categories": [{"id": 1}],
               "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [None] * 4,
                                "areas": [None, 0, 2, 3.5]},
                               {"id": 2, "video_id": 1, "category_id": 1, "segmentations": [None] * 4,
                                "areas": [None, 0, 0.0, None]}]}
    assert load_ground_truth(dataset).ann_avg_area.tolist() == [2.75, 0.0]
