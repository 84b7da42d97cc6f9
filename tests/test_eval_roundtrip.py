"""Writer round trip, reader fast path vs ordinary parsing, and the vectorised evaluator against the
straightforward loop implementation on randomised synthetic cases."""
from __future__ import annotations

import copy
import json
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.evaluation.data import InputError, load_ground_truth, load_predictions, predictions_from_list
from tests.eval_loop_reference import evaluate_loop
from pipelines.evaluation.metrics import evaluate
from tests.eval_synthetic import SyntheticCaseConfig, make_synthetic_case
from pipelines.evaluation.writer import video_results, write_results, write_submission_zip


@pytest.fixture(scope="module")
def small_case():
    config = SyntheticCaseConfig(num_videos=8, min_frames=5, max_frames=9, height=48, width=64,
                                 num_categories=5, min_predictions=5, max_predictions=30, seed=3)
    return make_synthetic_case(config)


def _decode(entry, height, width):
    frames = [mask_utils.decode(s) if s else np.zeros((height, width), np.uint8) for s in entry["segmentations"]]
    return np.stack(frames).astype(bool)  # (T, H, W)


def test_writer_round_trip_equals_in_memory_evaluation(small_case, tmp_path):
    ground_truth, results = small_case
    videos = {v["id"]: v for v in ground_truth["videos"]}
    categories = [c["id"] for c in ground_truth["categories"]]
    written = []
    for video_id in sorted({r["video_id"] for r in results}):
        entries = [r for r in results if r["video_id"] == video_id]
        height, width = videos[video_id]["height"], videos[video_id]["width"]
        masks = np.stack([_decode(e, height, width) for e in entries])           # (k, T, H, W)
        labels = np.array([categories.index(e["category_id"]) for e in entries])
        scores = np.array([e["score"] for e in entries])
        written += video_results(video_id, scores, labels, masks, categories,
                                 absent="null" if video_id % 2 else "empty")
    gt = load_ground_truth(ground_truth)
    in_memory = evaluate(gt, predictions_from_list(written))
    for name in ("results.json", "results.json.gz"):
        write_results(written, tmp_path / name)
        from_file = evaluate(gt, load_predictions(tmp_path / name))
        np.testing.assert_array_equal(from_file.stats, in_memory.stats)
        np.testing.assert_array_equal(from_file.precision, in_memory.precision)
    # Rewriting the masks does not change the metrics of the original results either.
    np.testing.assert_array_equal(evaluate(gt, predictions_from_list(results)).stats, in_memory.stats)
    write_submission_zip(written, tmp_path / "submission.zip")
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert archive.namelist() == ["results.json"]
        assert json.loads(archive.read("results.json")) == written


def test_writer_rejects_bad_shapes_and_labels():
    masks = np.zeros((2, 3, 4, 5), dtype=bool)
    with pytest.raises(ValueError, match="masks"):
        video_results(1, np.ones(2), np.zeros(2, int), masks[0], [1])
    with pytest.raises(ValueError, match="category id"):
        video_results(1, np.ones(2), np.array([0, 3]), masks, [1, 2])


def test_compact_json_and_reordered_keys_read_the_same(small_case):
    ground_truth, results = small_case
    gt = load_ground_truth(ground_truth)
    expected = evaluate(gt, predictions_from_list(results)).stats
    compact = json.dumps(results, separators=(",", ":")).encode()
    reordered = copy.deepcopy(results)
    for entry in reordered:
        entry["segmentations"] = [None if s is None else {"counts": s["counts"], "size": s["size"]}
                                  for s in entry["segmentations"]]
    for raw in (compact, json.dumps(reordered).encode()):
        np.testing.assert_array_equal(evaluate(gt, load_predictions(raw)).stats, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_loop_implementation(seed):
    config = SyntheticCaseConfig(num_videos=6, min_frames=4, max_frames=8, height=40, width=56,
                                 num_categories=4, min_gt_tracks=2, max_gt_tracks=5,
                                 min_predictions=4, max_predictions=40, seed=seed)
    ground_truth, results = make_synthetic_case(config)
    rng = np.random.default_rng(seed)
    for ann in ground_truth["annotations"]:  # crowd ground truth and coarse scores (many ties)
        ann["iscrowd"] = int(rng.random() < 0.15)
    for entry in results:
        entry["score"] = round(entry["score"], 1)
    expected, precision, recall = evaluate_loop(copy.deepcopy(ground_truth), copy.deepcopy(results))
    evaluation = evaluate(load_ground_truth(ground_truth), predictions_from_list(results))
    np.testing.assert_allclose(evaluation.stats, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(evaluation.precision, precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(evaluation.recall, recall, rtol=0, atol=1e-12)


def test_bad_results_entries_name_the_entry():
    with pytest.raises(InputError, match="entry 1 .*score"):
        predictions_from_list([{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": []},
                               {"video_id": 1, "category_id": 1, "segmentations": []}])
    with pytest.raises(InputError, match="entry 0 frame 1"):
        predictions_from_list([{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [None, "x"]}])
    with pytest.raises(InputError, match="JSON list"):
        load_predictions(b'{"video_id": 1}')
