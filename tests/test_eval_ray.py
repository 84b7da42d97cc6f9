"""Spreading the intersection work over a real local Ray cluster gives the same numbers."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.data import load_ground_truth, load_predictions
from pipelines.evaluation.metrics import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_map_equals_in_process(reference_dir, ray_local):
    from pipelines.evaluation.parallel import ray_intersection_map

    folder = reference_dir / "eval" / "b_ovis_like"
    gt, preds = load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json")
    serial = evaluate(gt, preds, "ovis")
    spread = evaluate(gt, preds, "ovis", parallel_map=ray_intersection_map(2))
    np.testing.assert_array_equal(spread.stats, serial.stats)
    np.testing.assert_array_equal(spread.precision, serial.precision)
