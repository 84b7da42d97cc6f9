"""Benchmark: vectorised CT-CL and set criterion against loop baselines, measured in one run.

CT-CL at B=2 clips, T=10 frames, Q=100 queries, C=256 channels, 10 instances per clip (some absent
at some frames), the default config (released negatives, momentum positives). The baseline is the
loop oracle ``tests/ctcl_loop_reference.py``, a step-by-step mirror of the released algorithm; both
get the same random choices (recorded from the vectorised run, replayed by (b, t, n)) and their
results are asserted equal before any timing.

Criterion (matcher + losses) at Q=100 queries, 10 frames, 64x64 predicted masks (targets 256x256),
5 instances per frame, 12544 points: the batched matcher against a per-image loop matcher that
follows Mask2Former (identical random points, assignments asserted equal); the losses are shared.

Run:  python benchmarks/bench_ctcl.py [--threads 1] [--skip-criterion]   (prints one JSON line;
      "*_min_ms" are minima, the figures least disturbed on a shared machine)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.criterion import CriterionConfig, SetCriterion  # noqa: E402
from models.ctcl import CTCLConfig, RandomChooser, ctcl_loss  # noqa: E402
from models.matcher import FrameTarget  # noqa: E402
from models.point_sampling import point_sample  # noqa: E402
from tests.ctcl_loop_reference import ctcl_loop  # noqa: E402


def timed(fn, repeats):
    """Median and minimum wall time in ms (the minimum is the figure least disturbed by other
    processes on a shared machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


class Recorder:
    """Wraps a chooser and keeps its answers by (b, t, n)."""

    def __init__(self, inner):
        self.inner, self.negative_by_key, self.fused_by_key = inner, {}, {}

    def negatives(self, calls, k):
        drawn = self.inner.negatives(calls, k)
        for row, neg in zip(calls.tolist(), drawn.tolist()):
            self.negative_by_key[tuple(row[:3])] = neg
        return drawn

    def fused_positive(self, items):
        flags = self.inner.fused_positive(items)
        for row, flag in zip(items.tolist(), flags.tolist()):
            self.fused_by_key[tuple(row)] = flag
        return flags

    def noise_queries(self, calls, q):
        return self.inner.noise_queries(calls, q)


class Replay:
    def __init__(self, recorder):
        self.recorder = recorder

    def negatives(self, calls, k):
        return torch.tensor([self.recorder.negative_by_key[tuple(r[:3])] for r in calls.tolist()])

    def fused_positive(self, items):
        return torch.tensor([self.recorder.fused_by_key[tuple(r)] for r in items.tolist()])

    def noise_queries(self, calls, q):
        return torch.full((calls.shape[0],), -1, dtype=torch.int64)


def ctcl_case(dtype, seed=0, batch=2, frames=10, queries=100, channels=256, instances=10):
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, frames, queries, channels, generator=gen, dtype=dtype) * 0.2
    gt_to_query = torch.stack([torch.stack([torch.randperm(queries, generator=gen)[:instances] for _ in range(frames)]) for _ in range(batch)])
    valid = torch.rand(batch, frames, instances, generator=gen) > 0.25
    return embeds, gt_to_query, valid


def bench_ctcl():
    config = CTCLConfig()
    results = {}
    for dtype in (torch.float64, torch.float32):
        embeds, g2q, valid = ctcl_case(dtype)
        recorder = Recorder(RandomChooser(torch.Generator().manual_seed(1)))
        vec = ctcl_loss(embeds, g2q, valid, config, chooser=recorder)
        loop = ctcl_loop(list(embeds), list(g2q), list(valid), config, Replay(recorder))
        assert torch.equal(vec.items, loop["items"]) and torch.equal(vec.fused_positive, loop["fused_positive"])
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vec.loss_reid, loop["loss_reid"], **tol)
        torch.testing.assert_close(vec.loss_aux_reid, loop["loss_aux_reid"], **tol)
        torch.testing.assert_close(vec.item_loss_reid, loop["item_loss_reid"], **tol)
        results["num_items"] = vec.num_items
        results["fused_positives"] = int(vec.fused_positive.sum())

    embeds, g2q, valid = ctcl_case(torch.float32)
    recorder = Recorder(RandomChooser(torch.Generator().manual_seed(1)))
    ctcl_loss(embeds, g2q, valid, config, chooser=recorder)
    replay = Replay(recorder)

    def vec_forward():
        with torch.no_grad():
            ctcl_loss(embeds, g2q, valid, config, generator=torch.Generator().manual_seed(1))

    def vec_backward():
        leaf = embeds.clone().requires_grad_(True)
        out = ctcl_loss(leaf, g2q, valid, config, generator=torch.Generator().manual_seed(1))
        (out.loss_reid + out.loss_aux_reid).backward()

    def loop_forward():
        with torch.no_grad():
            ctcl_loop(list(embeds), list(g2q), list(valid), config, replay)

    def loop_backward():
        leaf = embeds.clone().requires_grad_(True)
        out = ctcl_loop(list(leaf), list(g2q), list(valid), config, replay)
        (out["loss_reid"] + out["loss_aux_reid"]).backward()

    for fn in (vec_forward, vec_backward, loop_forward, loop_backward):
        fn()  # warm-up
    for name, fn, repeats in (
        ("vec_forward", vec_forward, 60),
        ("vec_forward_backward", vec_backward, 60),
        ("loop_forward", loop_forward, 10),
        ("loop_forward_backward", loop_backward, 10),
    ):
        results[f"{name}_ms"], results[f"{name}_min_ms"] = timed(fn, repeats)
    for kind in ("forward", "forward_backward"):
        results[f"speedup_{kind}"] = results[f"loop_{kind}_ms"] / results[f"vec_{kind}_ms"]
        results[f"speedup_{kind}_min"] = results[f"loop_{kind}_min_ms"] / results[f"vec_{kind}_min_ms"]
    return results


def loop_matcher(config, pred_logits, pred_masks, targets, generator):
    """Per-image matcher following Mask2Former's memory-efficient forward."""
    indices = []
    for image, target in enumerate(targets):
        prob = pred_logits[image].softmax(-1)
        cost_class = -prob[:, target["labels"]]
        coords = torch.rand(1, config.num_points, 2, generator=generator)
        tgt = point_sample(target["masks"].float()[:, None], coords.repeat(target["masks"].shape[0], 1, 1))[:, 0]
        out = point_sample(pred_masks[image][:, None], coords.repeat(pred_masks.shape[1], 1, 1))[:, 0]
        pos = F.binary_cross_entropy_with_logits(out, torch.ones_like(out), reduction="none")
        neg = F.binary_cross_entropy_with_logits(out, torch.zeros_like(out), reduction="none")
        cost_mask = (torch.einsum("nc,mc->nm", pos, tgt) + torch.einsum("nc,mc->nm", neg, 1 - tgt)) / out.shape[1]
        sig = out.sigmoid()
        cost_dice = 1 - (2 * torch.einsum("nc,mc->nm", sig, tgt) + 1) / (sig.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
        cost = config.mask_weight * cost_mask + config.class_weight * cost_class + config.dice_weight * cost_dice
        rows, cols = linear_sum_assignment(cost.cpu())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def bench_criterion():
    frames, queries, classes, instances = 10, 100, 40, 5
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(frames, queries, classes + 1, generator=gen)
    masks = torch.randn(frames, queries, 64, 64, generator=gen) * 3
    targets = []
    for _ in range(frames):
        coarse = torch.rand(instances, 16, 16, generator=gen) > 0.6
        targets.append(
            FrameTarget(
                labels=torch.randint(0, classes, (instances,), generator=gen),
                masks=F.interpolate(coarse[None].float(), size=(256, 256), mode="nearest")[0].bool(),
            )
        )
    config = CriterionConfig()
    criterion = SetCriterion(classes, config)

    ours = criterion.matcher(logits, masks, targets, torch.Generator().manual_seed(5))
    theirs = loop_matcher(config, logits, masks, targets, torch.Generator().manual_seed(5))
    for (r1, c1), (r2, c2) in zip(ours, theirs):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)

    aux = [(logits + 0.1 * k, masks - 0.1 * k) for k in range(9)]

    def matcher_vec():
        criterion.matcher(logits, masks, targets, torch.Generator().manual_seed(5))

    def matcher_loop():
        loop_matcher(config, logits, masks, targets, torch.Generator().manual_seed(5))

    def final_layer():
        criterion(logits, masks, targets, generator=torch.Generator().manual_seed(5))

    leaves = [t.clone().requires_grad_(True) for pair in [(logits, masks)] + aux for t in pair]

    def ten_layers_backward():
        pairs = [(leaves[2 * i], leaves[2 * i + 1]) for i in range(10)]
        losses, _ = criterion(pairs[0][0], pairs[0][1], targets, pairs[1:], generator=torch.Generator().manual_seed(5))
        sum(losses.values()).backward()

    for fn in (matcher_vec, matcher_loop, final_layer, ten_layers_backward):
        fn()
    results = {}
    for name, fn, repeats in (
        ("matcher_vec", matcher_vec, 10),
        ("matcher_loop", matcher_loop, 10),
        ("final_layer", final_layer, 10),
        ("10_layers_forward_backward", ten_layers_backward, 3),
    ):
        results[f"{name}_ms"], results[f"{name}_min_ms"] = timed(fn, repeats)
    results["matcher_speedup_min"] = results["matcher_loop_min_ms"] / results["matcher_vec_min_ms"]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-criterion", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    results.update({f"ctcl_{k}": v for k, v in bench_ctcl().items()})
    if not args.skip_criterion:
        results.update({f"criterion_{k}": v for k, v in bench_criterion().items()})
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
