"""Every experiment file loads against the real model presets and holds the published recipe;
the errors a new user meets on the command line name the file and the key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from models.model import CTVISConfig
from pipelines.config import build_experiment, list_experiments, load_experiment, parse_yaml
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "experiments"

# name -> (preset, classes, queries, negatives, sampling frames, frame range, train datasets with ratios)
PUBLISHED = {
    "ctvis_r50_ytvis19": ("ctvis_r50_ytvis19", 40, 100, 99, 10, 20, {"coco2ytvis2019_train": 1.0, "ytvis_2019_train": 1.5}),
    "ctvis_r50_ytvis21": ("ctvis_r50_ytvis21", 40, 100, 99, 10, 20, {"coco2ytvis2021_train": 1.0, "ytvis_2021_train": 0.8}),
    "ctvis_r50_ytvis22": ("ctvis_r50_ytvis21", 40, 100, 99, 10, 20, {"coco2ytvis2021_train": 1.0, "ytvis_2021_train": 0.8}),
    "ctvis_r50_ovis": ("ctvis_r50_ovis", 25, 100, 99, 10, 15, {"coco2ovis_train": 1.0, "ovis_train": 0.75}),
    "ctvis_swinl_ytvis19": ("ctvis_swinl_ytvis19", 40, 200, 199, 8, 16, {"coco2ytvis2019_train": 1.0, "ytvis_2019_train": 1.5}),
    "ctvis_swinl_ytvis21": ("ctvis_swinl_ytvis21", 40, 200, 199, 8, 16, {"coco2ytvis2021_train": 1.0, "ytvis_2021_train": 0.8}),
    "ctvis_swinl_ytvis22": ("ctvis_swinl_ytvis21", 40, 200, 199, 8, 16, {"coco2ytvis2021_train": 1.0, "ytvis_2021_train": 0.8}),
    "ctvis_swinl_ovis": ("ctvis_swinl_ovis", 25, 200, 199, 6, 10, {"coco2ovis_train": 1.0, "ovis_train": 0.75}),
}


def test_every_experiment_file_is_listed_here():
    names = {path.stem for path in list_experiments(EXPERIMENTS)}
    assert names == set(PUBLISHED) | {"tiny", "tiny_demo"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_experiments_hold_the_released_recipe(name):
    preset, classes, queries, negatives, frames, frame_range, datasets = PUBLISHED[name]
    experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
    model = experiment.model
    assert experiment.name == name and experiment.model_preset == preset
    assert isinstance(model, CTVISConfig)
    assert model.network.num_classes == classes
    assert model.network.transformer_decoder.num_queries == queries
    assert model.num_negatives == negatives and model.ctcl.num_negatives is None  # derived: queries - 1
    assert (model.ctcl.reid_weight, model.ctcl.aux_reid_weight) == (2.0, 3.0)
    assert model.tracker.match_score_thr == 0.3 and model.tracker.embed_type == "similarity_guided"
    assert model.num_topk == classes
    assert (model.criterion.num_points, model.criterion.no_object_weight) == (12544, 0.1)
    assert (experiment.data.sampling_frame_num, experiment.data.sampling_frame_range) == (frames, frame_range)
    assert {spec.name: spec.ratio for spec in experiment.data.train} == datasets
    assert experiment.train.batch_size == 16 and experiment.train.schedule.max_iter == 16000
    assert experiment.train.optimizer.lr == pytest.approx(1e-4)


def test_tiny_experiment_and_resolved_round_trip():
    experiment = load_experiment(EXPERIMENTS / "tiny.yaml")
    assert experiment.model_preset == "tiny" and experiment.model.network.backbone.kind == "tiny"
    assert experiment.model.criterion.num_points <= 1024
    assert not experiment.compute.use_gpu and experiment.train.batch_size == 2
    assert all(spec.annotations and spec.frames_root for spec in experiment.data.train)  # custom synthetic split
    # The printed resolved config is itself a valid experiment giving the same model.
    again = build_experiment(parse_yaml(experiment.to_yaml(), "resolved"), "resolved.yaml")
    assert again.model == experiment.model and again.config_hash() == experiment.config_hash()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "config", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("experiments/tiny.yaml", "model.tracker.match_scor_thr=0.1"),
         "experiments/tiny.yaml (with overrides model.tracker.match_scor_thr=0.1): model.tracker.match_scor_thr: "
         "unknown key (did you mean 'match_score_thr'?)"),
        (("experiments/tiny.yaml", "train.batch_size=abc"),
         "experiments/tiny.yaml (with overrides train.batch_size=abc): train.batch_size: Input should be a valid integer"),
        (("experiments/tiny.yaml", "model.ctcl.num_negatives=16"),
         "model: ctcl.num_negatives=16 must be in 1..15"),
        (("experiments/tyni.yaml",), "experiments/tyni.yaml: experiment file not found"),
    ],
)
def test_cli_errors_exit_2_naming_file_and_key(args, message):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_prints_the_resolved_tiny_config():
    result = _cli("experiments/tiny.yaml", "model.tracker.match_score_thr=0.4")
    assert result.returncode == 0, result.stderr
    resolved = parse_yaml(result.stdout, "stdout")
    assert resolved["model"]["preset"] == "tiny"
    assert resolved["model"]["tracker"]["match_score_thr"] == 0.4
    assert resolved["model"]["inference"]["num_topk"] == 10
