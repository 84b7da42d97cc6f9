"""Unit tests of the training recipe pieces: parameter groups, schedule, clipping, checkpoint state,
rank clip positions, seeding, loss summaries and the pictures."""
from __future__ import annotations

import json

import io

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.config import GradClipConfig, OptimizerConfig, ScheduleConfig
from pipelines.train import optim, state
from pipelines.train.data import rank_positions
from pipelines.train.loop import loss_summary, step_seed


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))


class _Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.head = nn.Linear(4, 5)
        self.head_norm = nn.LayerNorm(5)
        self.queries = nn.Embedding(7, 5)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.network = _Network()
        self.shared = self.network.head  # the same parameters reached twice are grouped once


def _group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_parameter_groups_follow_mask2former_rules():
    model = _Model()
    cfg = OptimizerConfig(lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    groups = optim.parameter_groups(model, cfg)
    net = model.network
    expect = {
        net.backbone.conv.weight: (1e-5, 0.05),
        net.backbone.norm.weight: (1e-5, 0.0),
        net.backbone.relative_position_bias_table: (1e-5, 0.0),
        net.head.weight: (1e-4, 0.05),
        net.head.bias: (1e-4, 0.05),  # biases decay in Mask2Former (no bias rule)
        net.head_norm.weight: (1e-4, 0.0),
        net.queries.weight: (1e-4, 0.0),
    }
    for param, (lr, wd) in expect.items():
        group = _group_of(groups, param)
        assert group["lr"] == pytest.approx(lr) and group["weight_decay"] == wd
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == 10  # frozen params left out, shared once
    assert len(groups) == len({(g["lr"], g["weight_decay"]) for g in groups})  # equal hyper-params merged
    optimizer = optim.build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == len(groups)


def test_decay_values_for_norms_and_embeddings_are_configurable():
    model = _Model()
    groups = optim.parameter_groups(model, OptimizerConfig(weight_decay_norm=0.01, weight_decay_embed=0.02))
    assert _group_of(groups, model.network.head_norm.weight)["weight_decay"] == 0.01
    assert _group_of(groups, model.network.queries.weight)["weight_decay"] == 0.02


def _reference_multiplier(it, cfg):
    # the detectron2 composition written out long-hand: MultiStep value, linear warmup towards it
    value = 1.0
    for milestone in cfg.steps:
        if it >= milestone:
            value *= cfg.gamma
    if it < cfg.warmup_iters:
        end = 1.0
        for milestone in cfg.steps:
            if cfg.warmup_iters >= milestone:
                end *= cfg.gamma
        if cfg.warmup_method == "constant":
            return cfg.warmup_factor
        alpha = it / cfg.warmup_iters
        return cfg.warmup_factor * (1 - alpha) + end * alpha
    return value


@pytest.mark.parametrize("cfg", [
    ScheduleConfig(max_iter=100, steps=(30, 60), gamma=0.1, warmup_iters=10, warmup_factor=0.001),
    ScheduleConfig(max_iter=50, steps=(20,), gamma=0.5, warmup_iters=5, warmup_factor=0.2, warmup_method="constant"),
    ScheduleConfig(max_iter=20, steps=(), warmup_iters=0),
])
def test_scheduler_is_warmup_then_step_decay(cfg):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    scheduler = optim.build_scheduler(optimizer, cfg)
    seen = []
    for it in range(cfg.max_iter):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2.0 * _reference_multiplier(it, cfg) for it in range(cfg.max_iter)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_full_model_clipping_bounds_the_global_norm():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    norm = optim.clip_gradients([a, b], GradClipConfig(value=0.01))
    assert float(norm) == pytest.approx((9 * 3 + 16 * 4) ** 0.5, rel=1e-6)
    assert float(torch.cat([a.grad, b.grad]).norm()) == pytest.approx(0.01, rel=1e-4)
    assert optim.clip_gradients([a, b], GradClipConfig(enabled=False)) is None


def test_train_state_round_trip(tmp_path):
    model = _Model()
    optimizer = optim.build_optimizer(model, OptimizerConfig())
    scheduler = optim.build_scheduler(optimizer, ScheduleConfig(max_iter=10, steps=(5,), warmup_iters=2))
    model.network.head.weight.grad = torch.ones_like(model.network.head.weight)
    optimizer.step()
    scheduler.step()
    saved = state.TrainState(step=3, data_position=12, model=model.state_dict(), optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), scaler=torch.amp.GradScaler("cpu", enabled=False).state_dict(),
                             rng_cpu=torch.get_rng_state(), rng_cuda=[], mlflow_run_id="abc", experiment_name="x",
                             config_hash="h")
    saved.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [state.META_FILE, state.STATE_FILE]
    assert json.loads((tmp_path / "ckpt" / state.META_FILE).read_text())["files"] == {
        state.STATE_FILE: (tmp_path / "ckpt" / state.STATE_FILE).stat().st_size}
    loaded = state.TrainState.load(tmp_path / "ckpt")
    assert (loaded.step, loaded.data_position, loaded.mlflow_run_id) == (3, 12, "abc")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model[k], v)
    restored = _Model()
    restored.load_state_dict(loaded.model)
    opt2 = optim.build_optimizer(restored, OptimizerConfig())
    opt2.load_state_dict(loaded.optimizer)
    (index, moments), = optimizer.state_dict()["state"].items()  # only head.weight had a gradient
    assert torch.equal(opt2.state_dict()["state"][index]["exp_avg_sq"], moments["exp_avg_sq"])
    assert json.loads((tmp_path / "ckpt" / state.META_FILE).read_text())["config_hash"] == "h"  # readable without torch
    with pytest.raises(FileNotFoundError, match="not a CTVIS training checkpoint"):
        state.TrainState.load(tmp_path)


def test_a_checkpoint_copied_part_way_is_refused_by_every_reader(tmp_path):
    """A killed upload leaves some of the checkpoint's files, or one cut short: resuming, `ctvis
    predict CHECKPOINT_DIR` and `model.weights=CHECKPOINT_DIR` refuse it, naming what is missing."""
    import itertools
    import shutil

    from pipelines.inference.model_source import resolve_model
    from pipelines.weights import WeightsError, check_checkpoint_complete

    model = _Model()
    whole = tmp_path / "whole"
    state.TrainState(step=2, data_position=8, model=model.state_dict(), optimizer={}, scheduler={}, scaler={},
                     rng_cpu=torch.get_rng_state(), rng_cuda=[]).save(whole, config_yaml="name: x\n")
    assert sorted(p.name for p in whole.iterdir()) == [state.CONFIG_FILE, state.META_FILE, state.STATE_FILE]
    check_checkpoint_complete(str(whole))
    assert state.TrainState.load(whole).step == 2

    names = sorted(p.name for p in whole.iterdir())
    partial = [{n: None for n in subset} for keep in range(len(names))  # what a copy in any order can leave
               for subset in itertools.combinations(names, keep)]
    size = (whole / state.STATE_FILE).stat().st_size
    partial.append({state.META_FILE: None, state.CONFIG_FILE: None, state.STATE_FILE: size // 2})  # cut short
    for k, files in enumerate(partial):
        copy = tmp_path / f"partial{k}"
        copy.mkdir()
        for name, cut in files.items():
            data = (whole / name).read_bytes()
            (copy / name).write_bytes(data if cut is None else data[:cut])
        with pytest.raises(WeightsError, match="incomplete checkpoint"):
            check_checkpoint_complete(str(copy))
        with pytest.raises((WeightsError, FileNotFoundError), match="incomplete checkpoint|not a CTVIS training"):
            state.TrainState.load(copy)
        with pytest.raises(WeightsError, match="incomplete checkpoint|not an experiment YAML"):
            resolve_model(str(copy))
        shutil.rmtree(copy)


def test_run_info_and_fault_marker_live_beside_the_run(tmp_path):
    root = str(tmp_path / "runs")
    assert state.read_run_info(root, "exp") is None
    state.write_run_info(root, "exp", {"mlflow_run_id": "r1"})
    assert state.read_run_info(root, "exp") == {"mlflow_run_id": "r1"}
    assert state.fault_marker_uri(root, "exp", 4).startswith(str(tmp_path / "runs" / "exp"))


def test_rank_positions_partition_each_step():
    B, W = 6, 3
    per_rank = [rank_positions(2, 4, B, W, r).reshape(4, 2) for r in range(W)]
    for s in range(4):
        step_positions = np.sort(np.concatenate([p[s] for p in per_rank]))
        np.testing.assert_array_equal(step_positions, np.arange((2 + s) * B, (3 + s) * B))
    with pytest.raises(ValueError, match="multiple"):
        rank_positions(0, 1, 5, 2, 0)


def test_step_seed_depends_only_on_seed_step_rank():
    # pinned: a resumed run (another process, another version of this code) must draw the same seeds
    assert step_seed(0, 5, 1) == 3912132981752410565 and step_seed(7, 0, 0) == 6242471041837971028
    assert len({step_seed(s, t, r) for s in range(2) for t in range(50) for r in range(2)}) == 200
    assert 0 <= step_seed(123, 10**6, 7) < 2**63


def test_loss_summary_sums_families_over_layers():
    terms = {"loss_ce": 1.0, "loss_ce_0": 0.5, "loss_ce_1": 0.25, "loss_mask": 2.0, "loss_mask_0": 1.0,
             "loss_dice": 3.0, "loss_reid": 0.1, "loss_aux_reid": 0.2}
    summary = loss_summary(terms)
    assert summary["loss_ce_all_layers"] == 1.75 and summary["loss_mask_all_layers"] == 3.0
    assert summary["loss_dice_all_layers"] == 3.0 and summary["loss_total"] == pytest.approx(8.05)


def test_overlay_strip_and_loss_plot_are_pngs():
    from PIL import Image

    from pipelines.train.visualize import loss_curve_plot, overlay_strip

    frames = np.zeros((5, 32, 40, 3), dtype=np.uint8)
    masks = np.zeros((2, 5, 32, 40), dtype=bool)
    masks[0, :, 4:12, 4:12] = True
    masks[1, 2:, 20:30, 10:30] = True
    png = overlay_strip(frames, masks, [0, 3], [0.9, 0.6], ["disc", "square"], max_frames=3, min_height=32)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (32, 3 * 40 + 2 * 2, 3)
    assert image[8, 8].any()  # the first mask is painted on the first frame
    enlarged = np.asarray(Image.open(io.BytesIO(overlay_strip(frames, masks, [0], [0.9], ["disc"], max_frames=1,
                                                              min_height=64))))
    assert enlarged.shape == (64, 80, 3)  # 2x: small videos are drawn larger
    plot = Image.open(io.BytesIO(loss_curve_plot({"loss_total": ([1, 2, 3], [3.0, 2.0, 1.0]),
                                                  "loss_reid": ([1, 3], [0.5, 0.2])})))
    assert plot.size == (900, 520)


def test_train_verb_is_listed_and_reports_config_errors(capsys):
    from pipelines.cli import main
    from tests.conftest import PROJECT_ROOT

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out
    assert main(["train", str(PROJECT_ROOT / "experiments" / "tiny.yaml"), "train.fault_at_step=-1"]) == 2
    assert "train.fault_at_step" in capsys.readouterr().err
    tiny = str(PROJECT_ROOT / "experiments" / "tiny.yaml")
    assert main(["train", tiny, "train.batch_size=3", "compute.num_workers=2"]) == 2
    assert "must be a multiple of compute.num_workers 2" in capsys.readouterr().err
    assert main(["train", tiny]) == 2  # the tiny experiment's splits are raw: they need ingesting first
    assert "no `shards` URI; run `ctvis data ingest`" in capsys.readouterr().err


def test_train_summary_shows_statistics_without_ground_truth_as_a_dash():
    from pipelines.train.job import TrainingSummary, format_summary

    summary = TrainingSummary("tiny", "tiny", "run", "sqlite:///x", "file:///a", "/runs/tiny", 20, 1.5,
                              {"val/AP": 12.5, "val/AP_M": -1.0}, None, None, None, False, 3.0)
    text = format_summary(summary)
    assert "AP 12.5, AP_M -" in text and "-1.0" not in text
