"""GPU check (`make gpu-check`): on a CUDA device, the parity tests on CUDA with TF32 off, a timed
training step of the R50 model and the inference of one 36-frame video; one JSON line.

    python benchmarks/gpu_check.py [--steps 5] [--skip-tests]

1. ``pytest -m "parity or gpu"`` with ``CTVIS_PARITY_DEVICE=cuda``: the forward / tracker /
   post-processing fixtures of the released code, compared on the GPU (float32, TF32 off), and the
   tests marked ``gpu``;
2. a training step of ``ctvis_r50_ytvis19`` (forward, loss, backward, AdamW step) on 2 clips x 10
   frames at the recipe's largest training size (shortest edge 640, longer edge capped at 768: 432x768
   for 16:9 frames), timed in float32 and under AMP (bfloat16 autocast; float16 autocast with a
   GradScaler, as `ctvis train` runs with ``train.amp``), min over ``--steps`` steps after 2 warm-ups,
   alternating the modes, with the peak memory of each;
3. ``infer_video`` on one 36-frame video at the recipe's test size (shortest edge 480: 480x853),
   min over 3 runs after a warm-up.
Where no CUDA device exists it prints a line saying so and exits 0: nothing here can run on a CPU.
Random weights (the deterministic generator's layout is not needed for timing): the work per step
does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_clips(clips: int, frames: int, height: int, width: int, num_classes: int, instances: int = 4,
                    seed: int = 0):
    """A ClipBatch of moving boxes (every instance present in every frame)."""
    import numpy as np

    from models.clip_batch import ClipBatch

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (clips, frames, 3, height, width), dtype=np.uint8)
    masks = np.zeros((clips, frames, instances, height, width), dtype=bool)
    for b in range(clips):
        for n in range(instances):
            top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            for t in range(frames):
                masks[b, t, n, top + 2 * t: top + 2 * t + height // 4, left + 3 * t: left + 3 * t + width // 4] = True
    return ClipBatch.from_numpy({
        "images": images, "image_sizes": np.tile(np.array([height, width]), (clips, frames, 1)),
        "gt_classes": rng.integers(0, num_classes, (clips, instances)), "gt_ids": np.tile(np.arange(instances), (clips, frames, 1)),
        "gt_masks": masks, "video_ids": np.arange(1, clips + 1), "frame_indices": np.tile(np.arange(frames), (clips, 1)),
        "dataset_index": np.zeros(clips, dtype=np.int64)})


def parity_tests() -> dict:
    env = {**os.environ, "CTVIS_PARITY_DEVICE": "cuda"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "parity or gpu", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    tail = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr.strip()[-300:]
    counts = {key: int(value) for value, key in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    return {"exit_code": run.returncode, "summary": tail, **counts}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(steps: int, device: str = "cuda", config=None, size=None) -> dict:
    """Min step time per precision mode (see the module notes); `config`/`size` default to the R50
    recipe (the tests run it with the tiny preset on the CPU, so the script itself is checked)."""
    import torch

    from models.model import build_model
    from models.presets import ctvis_r50_ytvis19
    from pipelines.data.augment import shortest_edge_size

    device = torch.device(device)
    height, width = size or shortest_edge_size(720, 1280, 640, 768)
    config = config or ctvis_r50_ytvis19()
    batch = synthetic_clips(2, 10, height, width, config.network.num_classes)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    modes = {"fp32": (False, torch.float32), "amp_bf16": (True, torch.bfloat16)}
    if device.type == "cuda":
        modes["amp_fp16"] = (True, torch.float16)

    def step(mode: str) -> float:
        enabled, dtype = modes[mode]
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled):
            losses = model(batch, seed=0)
            total = sum(losses.values())
        if dtype == torch.float16:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {mode: [] for mode in modes}
    peak: dict[str, float] = {}
    for mode in modes:  # warm-up (cuDNN autotuning, allocator)
        step(mode)
        step(mode)
    for _ in range(steps):
        for mode in modes:  # alternating, so drifts hit every mode alike
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[mode].append(step(mode))
            if device.type == "cuda":
                peak[mode] = max(peak.get(mode, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    fp32 = min(times["fp32"])
    return {"clips": 2, "frames": 10, "size": [height, width],
            **{f"{mode}_step_s": round(min(values), 4) for mode, values in times.items()},
            **{f"{mode}_peak_gib": round(value, 2) for mode, value in peak.items()},
            **{f"{mode}_speedup": round(fp32 / min(values), 2) for mode, values in times.items() if mode != "fp32"}}


def time_inference(device: str = "cuda", config=None, size=None, num_frames: int = 36) -> dict:
    import torch

    from models.model import build_model
    from models.presets import ctvis_r50_ytvis19
    from pipelines.data.augment import shortest_edge_size

    device = torch.device(device)
    height, width = size or shortest_edge_size(720, 1280, 480, 1333)
    model = build_model(config or ctvis_r50_ytvis19()).to(device).eval()
    frames = torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    timings = []
    for _ in range(4):
        _sync(device)
        start = time.perf_counter()
        model.infer_video(frames, output_size=(720, 1280))
        _sync(device)
        timings.append(time.perf_counter() - start)
    best = min(timings[1:])
    return {"frames": num_frames, "size": [height, width], "output_size": [720, 1280], "video_s": round(best, 3),
            "frames_per_s": round(num_frames / best, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here: nothing to check (run it on a GPU machine)", file=sys.stderr)
        print(json.dumps({"benchmark": "gpu_check", "cuda": False}))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result = {"benchmark": "gpu_check", "cuda": True, "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__}
    if not args.skip_tests:
        result["parity_tests"] = parity_tests()
    result["training_step"] = time_training(args.steps)
    result["inference_36_frames"] = time_inference()
    print(json.dumps(result))
    return 1 if result.get("parity_tests", {}).get("exit_code", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
