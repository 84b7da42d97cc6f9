"""`make gpu-check` (benchmarks/gpu_check.py): without CUDA it says so and exits 0; its timed
training step and inference run (here on the CPU with the tiny preset), so the script a GPU
session runs is checked by the suite."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from models import presets

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_says_so_and_exits_0(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"benchmark": "gpu_check", "cuda": False}
    assert "no CUDA device" in captured.err


def test_the_timed_step_and_inference_run(gpu_check):
    training = gpu_check.time_training(1, device="cpu", config=presets.tiny(), size=(64, 96))
    assert training["fp32_step_s"] > 0 and training["amp_bf16_step_s"] > 0 and "amp_bf16_speedup" in training
    inference = gpu_check.time_inference(device="cpu", config=presets.tiny(), size=(64, 96), num_frames=6)
    assert inference["frames"] == 6 and inference["video_s"] > 0
