"""Strict experiment configs: errors name the file and the dotted key; overrides; resolved output."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from pipelines.config import ConfigError, build_experiment, load_experiment, parse_yaml


@dataclasses.dataclass(frozen=True)
class _Tracker:
    match_score_thr: float = 0.3
    match_type: Literal["greedy", "hungarian"] = "greedy"

    def __post_init__(self):
        if not 0.0 <= self.match_score_thr <= 1.0:
            raise ValueError(f"match_score_thr must be in [0, 1], got {self.match_score_thr}")


@dataclasses.dataclass(frozen=True)
class _Model:
    num_queries: int = 100
    in_features: tuple[str, ...] = ("res3", "res4", "res5")
    tracker: _Tracker = _Tracker()


PRESETS = {"toy": _Model}
BASE = """
name: toy-exp
model:
  preset: toy
  num_queries: 20
  tracker: {match_score_thr: 0.5}
data:
  train: [{name: ytvis_2019_train, ratio: 1.5}, {name: coco2ytvis2019_train}]
train:
  optimizer: {lr: 1e-4}
  schedule: {max_iter: 100, steps: [50, 80]}
"""


def _build(overrides=(), text=BASE):
    return build_experiment(parse_yaml(text, "toy.yaml"), "toy.yaml", list(overrides), PRESETS)


def test_defaults_fill_in_and_values_are_typed():
    exp = _build()
    assert exp.model == _Model(num_queries=20, tracker=_Tracker(match_score_thr=0.5))
    assert exp.train.optimizer.lr == pytest.approx(1e-4)  # YAML 1.1 would read 1e-4 as a string
    assert exp.train.optimizer.weight_decay == 0.05
    assert exp.data.train[0].ratio == 1.5 and exp.data.train[1].ratio == 1.0
    assert exp.train.schedule.steps == (50, 80)


def test_overrides_apply_to_model_and_platform_and_lists():
    exp = _build(["train.optimizer.lr=2e-4", "model.tracker.match_type=hungarian", "data.train.1.ratio=2",
                  "model.in_features=[res4,res5]"])
    assert exp.train.optimizer.lr == pytest.approx(2e-4)
    assert exp.model.tracker.match_type == "hungarian"
    assert exp.data.train[1].ratio == 2.0
    assert exp.model.in_features == ("res4", "res5")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.num_querys=3", r"model\.num_querys: unknown key \(did you mean 'num_queries'\?\)"),
        ("model.num_queries=many", r"model\.num_queries: Input should be a valid integer"),
        ("model.num_queries=2.5", r"model\.num_queries: "),
        ("model.tracker.match_score_thr=2", r"model\.tracker: match_score_thr must be in \[0, 1\]"),
        ("model.tracker.match_type=best", r"model\.tracker\.match_type: Input should be 'greedy' or 'hungarian'"),
        ("train.optimizer.lrr=1", r"train\.optimizer\.lrr: unknown key \(did you mean 'lr'\?\)"),
        ("train.optimizer.lr=-1", r"train\.optimizer\.lr: Input should be greater than 0"),
        ("train.batch_size=sixteen", r"train\.batch_size: Input should be a valid integer"),
        ("train.schedule.steps=[90,50]", r"train\.schedule: .*steps must be increasing"),
        ("data.train.5.ratio=1", r"data\.train\.5: not an index"),
        ("traim.seed=1", r"traim: unknown key \(did you mean 'train'\?\)"),
        ("model.preset=r51", r"model\.preset: unknown preset 'r51'"),
    ],
)
def test_bad_values_name_the_file_and_dotted_key(override, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        _build([override])
    assert "toy.yaml" in str(info.value)


def test_missing_required_sections_and_bad_yaml():
    with pytest.raises(ConfigError, match=r"toy\.yaml: data: required key is missing"):
        _build(text="name: x\nmodel: {preset: toy}\n")
    with pytest.raises(ConfigError, match=r"toy\.yaml: model\.preset: required"):
        _build(text="name: x\ndata: {train: [{name: a}]}\n")
    with pytest.raises(ConfigError, match=r"toy\.yaml: not valid YAML"):
        parse_yaml("name: [unclosed", "toy.yaml")
    with pytest.raises(ConfigError, match=r"name: required"):
        _build(text="name: 'has space'\nmodel: {preset: toy}\ndata: {train: [{name: a}]}\n")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: experiment file not found"):
        load_experiment(tmp_path / "nope.yaml", preset_table=PRESETS)


def test_resolved_config_hash_and_params():
    exp = _build()
    same = _build()
    other = _build(["train.seed=3"])
    assert exp.config_hash() == same.config_hash() != other.config_hash()
    resolved = parse_yaml(exp.to_yaml(), "resolved")
    assert resolved["model"]["preset"] == "toy" and resolved["model"]["tracker"]["match_score_thr"] == 0.5
    assert resolved["train"]["clip_gradients"]["value"] == 0.01  # defaults are printed too
    # the resolved YAML is itself a valid experiment giving the same config
    again = build_experiment(resolved, "resolved.yaml", preset_table=PRESETS)
    assert again.config_hash() == exp.config_hash()
    params = exp.flat_params()
    assert params["model.num_queries"] == "20" and params["data.train.0.name"] == "ytvis_2019_train"


def test_secrets_are_masked_everywhere():
    exp = _build(["storage.s3.secret_access_key=abc-secret-123"])
    assert "abc-secret-123" not in exp.to_yaml()
    assert all("abc-secret-123" not in v for v in exp.flat_params().values())
    assert exp.to_dict(reveal_secrets=True)["storage"]["s3"]["secret_access_key"] == "abc-secret-123"
