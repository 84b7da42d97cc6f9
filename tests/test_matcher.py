from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from models.matcher import FrameTarget, HungarianMatcher, MatcherConfig
from models.point_sampling import point_sample


def random_frames(seed, num_images=4, queries=5, classes=3, pred_size=(8, 10), target_scale=4, max_targets=4):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, queries, classes + 1, generator=gen) * 2
    masks = torch.randn(num_images, queries, *pred_size, generator=gen) * 3
    targets = []
    for _ in range(num_images):
        m = int(torch.randint(0, max_targets + 1, (1,), generator=gen))
        size = (pred_size[0] * target_scale, pred_size[1] * target_scale)
        targets.append(
            FrameTarget(
                labels=torch.randint(0, classes, (m,), generator=gen),
                masks=torch.rand(m, *size, generator=gen) > 0.6,
            )
        )
    return logits, masks, targets


def loop_costs(config, logits, masks, targets, coords):
    """Mask2Former's per-image cost, spelled out (two einsums, explicit BCE terms)."""
    out = []
    for image, target in enumerate(targets):
        prob = logits[image].softmax(-1)
        cost_class = -prob[:, target["labels"]]
        point = coords[image][None]
        tgt = point_sample(target["masks"].float()[:, None], point.repeat(target["masks"].shape[0], 1, 1))[:, 0]
        prd = point_sample(masks[image][:, None], point.repeat(masks.shape[1], 1, 1))[:, 0]
        pos = F.binary_cross_entropy_with_logits(prd, torch.ones_like(prd), reduction="none")
        neg = F.binary_cross_entropy_with_logits(prd, torch.zeros_like(prd), reduction="none")
        cost_mask = (torch.einsum("nc,mc->nm", pos, tgt) + torch.einsum("nc,mc->nm", neg, 1 - tgt)) / prd.shape[1]
        sig = prd.sigmoid()
        cost_dice = 1 - (2 * torch.einsum("nc,mc->nm", sig, tgt) + 1) / (sig.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
        out.append(config.cost_mask * cost_mask + config.cost_class * cost_class + config.cost_dice * cost_dice)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_costs_equal_per_image_formulas(seed):
    config = MatcherConfig(num_points=300)
    logits, masks, targets = random_frames(seed)
    costs, counts = HungarianMatcher(config).cost_matrices(logits, masks, targets, torch.Generator().manual_seed(9))
    coords = torch.rand(len(targets), config.num_points, 2, generator=torch.Generator().manual_seed(9))
    for image, expected in enumerate(loop_costs(config, logits, masks, targets, coords)):
        assert counts[image] == expected.shape[1]
        torch.testing.assert_close(costs[image, :, : counts[image]], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_assignment_is_brute_force_optimal(seed):
    config = MatcherConfig(num_points=200)
    logits, masks, targets = random_frames(seed, num_images=5, queries=5, max_targets=5)
    matcher = HungarianMatcher(config)
    costs, counts = matcher.cost_matrices(logits, masks, targets, torch.Generator().manual_seed(seed))
    indices = matcher(logits, masks, targets, torch.Generator().manual_seed(seed))
    for image, ((rows, cols), count) in enumerate(zip(indices, counts)):
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(count, 5)
        assert torch.equal(rows, torch.sort(rows).values)  # query ids ascending
        cost = costs[image, :, :count].double()
        best = min(
            (sum(cost[q, g].item() for g, q in enumerate(perm)), perm)
            for perm in itertools.permutations(range(5), count)
        )
        got = sum(cost[rows[i], cols[i]].item() for i in range(len(rows)))
        assert got == pytest.approx(best[0], abs=1e-9)
        expected = sorted((q, g) for g, q in enumerate(best[1]))
        assert list(zip(rows.tolist(), cols.tolist())) == expected


def test_perfect_predictions_are_matched_to_their_targets():
    gen = torch.Generator().manual_seed(0)
    queries, classes = 6, 4
    gt = torch.rand(3, 16, 16, generator=gen) > 0.5
    labels = torch.tensor([2, 0, 3])
    owner = torch.tensor([4, 1, 5])  # query q predicts target
    logits = torch.full((1, queries, classes + 1), -5.0)
    logits[0, :, -1] = 5.0
    masks = torch.full((1, queries, 16, 16), -10.0)
    for target, query in enumerate(owner.tolist()):
        logits[0, query, labels[target]] = 10.0
        masks[0, query] = torch.where(gt[target], 10.0, -10.0)
    rows, cols = HungarianMatcher(MatcherConfig(num_points=500))(logits, masks, [FrameTarget(labels=labels, masks=gt)])[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 1, 2: 5}


def test_empty_targets_and_errors():
    logits, masks, targets = random_frames(0, num_images=2)
    empty = [FrameTarget(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 32, 40, dtype=torch.bool))] * 2
    indices = HungarianMatcher(MatcherConfig(num_points=50))(logits, masks, empty)
    assert all(r.numel() == 0 and c.numel() == 0 for r, c in indices)
    mixed = [empty[0], targets[1] if targets[1]["labels"].numel() else targets[0]]
    indices = HungarianMatcher(MatcherConfig(num_points=50))(logits, masks, mixed)
    assert indices[0][0].numel() == 0 and indices[1][0].numel() == min(5, mixed[1]["labels"].numel())
    with pytest.raises(ValueError, match="disagree"):
        HungarianMatcher()(logits, masks, targets[:1])
    with pytest.raises(ValueError, match="all matching costs"):
        HungarianMatcher(MatcherConfig(cost_class=0, cost_mask=0, cost_dice=0))


def test_targets_of_different_sizes_are_zero_padded():
    logits, masks, _ = random_frames(1, num_images=2)
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 32, 40, generator=gen) > 0.5
    b = torch.rand(1, 24, 40, generator=gen) > 0.5
    targets = [FrameTarget(labels=torch.tensor([0, 1]), masks=a), FrameTarget(labels=torch.tensor([2]), masks=b)]
    padded_b = torch.zeros(1, 32, 40, dtype=torch.bool)
    padded_b[:, :24] = b
    same = [targets[0], FrameTarget(labels=torch.tensor([2]), masks=padded_b)]
    matcher = HungarianMatcher(MatcherConfig(num_points=100))
    c1, _ = matcher.cost_matrices(logits, masks, targets, torch.Generator().manual_seed(0))
    c2, _ = matcher.cost_matrices(logits, masks, same, torch.Generator().manual_seed(0))
    torch.testing.assert_close(c1, c2)
