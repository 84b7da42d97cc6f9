"""Results as `ctvis predict` writes them, reader fast path vs ordinary parsing, and the vectorised evaluator against the
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


@pytest.fixture(scope="module")
def small_case():
    config = SyntheticCaseConfig(num_videos=8, min_frames=5, max_frames=9, height=48, width=64,
                                 num_categories=5, min_predictions=5, max_predictions=30, seed=3)
    return make_synthetic_case(config)


def _decode(entry, height, width):
    frames = [mask_utils.decode(s) if s else np.zeros((height, width), np.uint8) for s in entry["segmentations"]]
    return np.stack(frames).astype(bool)  # (T, H, W)


def test_results_written_by_predict_evaluate_as_in_memory(small_case, tmp_path):
    """Predictions as `ctvis predict` writes them (per-video RLE entries, parts merged into results.json
    and submission.zip) evaluate exactly as the same masks in memory."""
    import torch

    from models.video_inference import VideoInstances
    from pipelines.inference.job import merge_parts, part_uri
    from pipelines.inference.predictor import instances_results

    ground_truth, results = small_case
    videos = {v["id"]: v for v in ground_truth["videos"]}
    categories = [c["id"] for c in ground_truth["categories"]]
    written = []
    video_ids = sorted({r["video_id"] for r in results})
    for video_id in video_ids:
        entries = [r for r in results if r["video_id"] == video_id]
        height, width = videos[video_id]["height"], videos[video_id]["width"]
        masks = torch.from_numpy(np.stack([_decode(e, height, width) for e in entries]))     # (k, T, H, W)
        # Entries 0 and 1 share one track (one mask, two classes), as the post-processing makes them.
        mask_index = torch.arange(len(entries)).clamp(min=1) - 1 if len(entries) > 1 else torch.zeros(1, dtype=torch.long)
        instances = VideoInstances(torch.tensor([e["score"] for e in entries]),
                                   torch.tensor([categories.index(e["category_id"]) for e in entries]),
                                   masks[1:] if len(entries) > 1 else masks, mask_index, (height, width))
        entries_out = instances_results(video_id, instances, masks.shape[1], categories)
        assert [e["score"] for e in entries_out] == pytest.approx([e["score"] for e in entries])
        (tmp_path / "parts").mkdir(exist_ok=True)
        (tmp_path / part_uri("", video_id)).write_text(json.dumps(entries_out))
        written += entries_out
    assert merge_parts(str(tmp_path), video_ids, set(video_ids)) == len(written)
    gt = load_ground_truth(ground_truth)
    in_memory = evaluate(gt, predictions_from_list(written))
    from_file = evaluate(gt, load_predictions(tmp_path / "results.json"))
    np.testing.assert_array_equal(from_file.stats, in_memory.stats)
    np.testing.assert_array_equal(from_file.precision, in_memory.precision)
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert archive.namelist() == ["results.json"]
        assert json.loads(archive.read("results.json")) == written


def test_results_entries_reject_labels_without_a_category():
    import torch

    from models.video_inference import VideoInstances
    from pipelines.inference.predictor import instances_results

    instances = VideoInstances(torch.ones(2), torch.tensor([0, 3]), torch.zeros(1, 3, 4, 5, dtype=torch.bool),
                               torch.zeros(2, dtype=torch.long), (4, 5))
    with pytest.raises(ValueError, match="label 3 has no category id"):
        instances_results(1, instances, 3, [1, 2])


def test_compact_and_dense_instances_give_the_same_entries():
    """The post-processing's compact masks (windows) are encoded as their dense form would be."""
    import torch

    from models.model import build_model
    from models.presets import preset
    from models.video_inference import VideoInstances
    from pipelines.inference.predictor import instances_results

    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    compact = model.infer_video((torch.rand(7, 3, 70, 90) * 255).to(torch.uint8), output_size=(140, 180))
    assert compact.windows is not None
    dense = VideoInstances(compact.scores, compact.labels, compact.track_masks, compact.mask_index, (140, 180))
    assert instances_results(4, compact, 7, [1, 2, 3]) == instances_results(4, dense, 7, [1, 2, 3])


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
