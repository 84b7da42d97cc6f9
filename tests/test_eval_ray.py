"""Spreading the intersection work over a real local Ray cluster gives the same numbers."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.evaluation.data import load_ground_truth, load_predictions
from pipelines.evaluation.metrics import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def local_ray(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=os.path.join("/tmp", f"ray_eval_{os.getpid()}"))
    yield ray
    ray.shutdown()


def test_ray_map_equals_in_process(reference_dir, local_ray):
    from pipelines.evaluation.parallel import ray_intersection_map

    folder = reference_dir / "eval" / "b_ovis_like"
    gt, preds = load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json")
    serial = evaluate(gt, preds, "ovis")
    spread = evaluate(gt, preds, "ovis", parallel_map=ray_intersection_map(2))
    np.testing.assert_array_equal(spread.stats, serial.stats)
    np.testing.assert_array_equal(spread.precision, serial.precision)
