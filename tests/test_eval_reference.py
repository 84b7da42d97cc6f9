"""Parity with the official evaluators on every shared reference case (absolute tolerance 1e-9)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.evaluation.suites import run_evaluation
from pipelines.evaluation.data import load_ground_truth, load_predictions
from pipelines.evaluation.metrics import MAX_DETECTIONS, evaluate

pytestmark = pytest.mark.parity
TOLERANCE = 1e-9
CASES = ["a_ytvis_small", "b_ovis_like", "c_edge_cases", "e_official_quirks"]


def _case(reference_dir, name):
    folder = reference_dir / "eval" / name
    return folder, json.loads((folder / "expected.json").read_text())


@pytest.mark.parametrize("name", CASES)
def test_stats_per_category_and_arrays_match_official(reference_dir, name):
    folder, expected = _case(reference_dir, name)
    evaluation = evaluate(load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json"))
    np.testing.assert_allclose(evaluation.stats, expected["stats"], rtol=0, atol=TOLERANCE)
    assert list(evaluation.stat_names) == expected["stat_names"]
    mine = {row["category_id"]: row for row in evaluation.per_category()}
    for row in expected["per_category"]:
        for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
            if row[key] is None:
                assert mine[row["category_id"]][key] is None, (row["category_id"], key)
            else:
                assert abs(mine[row["category_id"]][key] - row[key]) <= TOLERANCE, (row["category_id"], key)
    arrays = expected["arrays"]
    assert arrays["category_ids"] == evaluation.category_ids.tolist()
    precision = evaluation.precision
    ap = np.where((precision > -1).all(axis=1), precision.mean(axis=1), -1)  # (T, K, A, M)
    np.testing.assert_allclose(ap, arrays["ap"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(evaluation.recall, arrays["recall"], rtol=0, atol=TOLERANCE)
    assert evaluation.recall.shape[-1] == len(MAX_DETECTIONS)


def test_ovis_occlusion_stats_match_official(reference_dir):
    folder, expected = _case(reference_dir, "b_ovis_like")
    evaluation = evaluate(load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json"), "ovis")
    assert list(evaluation.stat_names) == expected["ovis_stat_names"]
    np.testing.assert_allclose(evaluation.stats, expected["ovis_stats"], rtol=0, atol=TOLERANCE)


def test_ovis_needs_occlusion_labels(reference_dir):
    folder, _ = _case(reference_dir, "c_edge_cases")
    with pytest.raises(ValueError, match="occlusion"):
        evaluate(load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json"), "ovis")


def test_ytvis2022_short_long_and_mean_match_official(reference_dir):
    folder, expected = _case(reference_dir, "f_ytvis2022_short_long")
    report = run_evaluation("ytvis2022", load_predictions(folder / "results.json"),
                            load_ground_truth(folder / "gt.json"), load_ground_truth(folder / "gt_short.json"),
                            load_ground_truth(folder / "gt_long.json"))
    np.testing.assert_allclose(report.short.stats, expected["stats_short"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(report.long.stats, expected["stats_long"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(report.main.stats, expected["stats"], rtol=0, atol=TOLERANCE)
    scores = report.ytvis2022_scores()
    assert scores.keys() == expected["ytvis2022_scores"].keys()
    for key, value in expected["ytvis2022_scores"].items():
        assert abs(scores[key] - value) <= TOLERANCE, key


def test_official_quirks_warn_and_strict_rejects(reference_dir):
    folder, _ = _case(reference_dir, "e_official_quirks")
    gt, preds = load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json")
    report = run_evaluation("ytvis", preds, gt)
    assert any("entry 0 (video 1: 4 segmentations, 6 frames)" in w for w in report.warnings)
    with pytest.raises(ValueError, match="do not match their video length"):
        run_evaluation("ytvis", preds, gt, strict=True)


def test_empty_results_give_zero_where_ground_truth_exists(reference_dir):
    folder, expected = _case(reference_dir, "c_edge_cases")
    evaluation = evaluate(load_ground_truth(folder / "gt.json"), load_predictions(b"[]"))
    has_gt = np.array(expected["stats"]) > -1
    assert (evaluation.stats[has_gt] == 0).all() and (evaluation.stats[~has_gt] == -1).all()
    assert any("no predictions" in w for w in evaluation.warnings)
