from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.criterion import CriterionConfig, SetCriterion, gt_to_query_from_indices
from models.matcher import FrameTarget, HungarianMatcher, MatcherConfig
from models.point_sampling import point_sample
from tests.criterion_support import ClipTargets, frame_targets_from_clip, frame_targets_from_clips
from tests.test_point_sampling import straightforward_uncertain_points

SMALL = CriterionConfig(num_points=256)


def random_clip(gen, frames=3, instances=3, size=(32, 32), classes=4) -> ClipTargets:
    ids = torch.arange(instances).repeat(frames, 1)
    ids[torch.rand(frames, instances, generator=gen) < 0.3] = -1
    masks = torch.rand(frames, instances, *size, generator=gen) > 0.7
    masks &= (ids != -1)[..., None, None]
    return ClipTargets(ids=ids, labels=torch.randint(0, classes, (instances,), generator=gen), masks=masks)


def predictions(gen, images, queries=6, classes=4, size=(8, 8), requires_grad=True):
    logits = torch.randn(images, queries, classes + 1, generator=gen).requires_grad_(requires_grad)
    masks = (torch.randn(images, queries, *size, generator=gen) * 2).requires_grad_(requires_grad)
    return logits, masks


def test_frame_targets_drop_absent_instances():
    gen = torch.Generator().manual_seed(0)
    clip = random_clip(gen, frames=4, instances=3)
    clip["ids"][2] = -1  # nobody at frame 2
    frames = frame_targets_from_clip(clip)
    assert len(frames) == 4
    for t, frame in enumerate(frames):
        present = clip["ids"][t] != -1
        assert torch.equal(frame["labels"], clip["labels"][present])
        assert torch.equal(frame["masks"], clip["masks"][t][present])
    assert frames[2]["labels"].numel() == 0
    kept = frame_targets_from_clip(clip, keep_absent=True)
    assert all(f["labels"].numel() == 3 for f in kept)
    with pytest.raises(ValueError, match="labels"):
        frame_targets_from_clip(ClipTargets(ids=clip["ids"], labels=clip["labels"][:2], masks=clip["masks"]))


def test_perfect_prediction_gives_small_loss_and_random_gives_large():
    gen = torch.Generator().manual_seed(1)
    clip = random_clip(gen, frames=2, instances=3, size=(32, 32))
    # Rectangles: few boundary pixels, where even a perfect logit map interpolates through 0.
    clip["masks"][:] = False
    for n, (top, left) in enumerate([(2, 3), (15, 4), (6, 18)]):
        clip["masks"][:, n, top : top + 10, left : left + 11] = True
    clip["masks"] &= (clip["ids"] != -1)[..., None, None]
    targets = frame_targets_from_clip(clip)
    queries, classes = 6, 4
    logits = torch.full((2, queries, classes + 1), -8.0)
    logits[:, :, -1] = 8.0
    masks = torch.full((2, queries, 32, 32), -12.0)
    for t, frame in enumerate(targets):
        for g, (label, mask) in enumerate(zip(frame["labels"], frame["masks"])):
            logits[t, g + 2, label] = 8.0
            logits[t, g + 2, -1] = -8.0
            masks[t, g + 2] = torch.where(mask, 12.0, -12.0)
    criterion = SetCriterion(classes, SMALL)
    perfect, indices = criterion(logits, masks, targets, weighted=False, generator=torch.Generator().manual_seed(0))
    assert perfect["loss_ce"] < 1e-3 and perfect["loss_mask"] < 0.2 and perfect["loss_dice"] < 0.2
    for (rows, cols), frame in zip(indices, targets):
        assert torch.equal(rows, cols + 2)
    noisy, _ = criterion(*predictions(gen, 2, queries, classes, (32, 32)), targets, weighted=False)
    assert all(noisy[k] > 3 * perfect[k] for k in ("loss_ce", "loss_mask", "loss_dice"))


def test_deep_supervision_keys_weights_and_finite_gradients():
    gen = torch.Generator().manual_seed(2)
    clips = [random_clip(gen), random_clip(gen)]
    targets = frame_targets_from_clips(clips)
    logits, masks = predictions(gen, 6)
    aux = [predictions(gen, 6) for _ in range(3)]
    criterion = SetCriterion(4, SMALL)
    losses, indices = criterion(logits, masks, targets, aux, generator=torch.Generator().manual_seed(3))
    expected = {"loss_ce", "loss_mask", "loss_dice"} | {f"loss_{k}_{i}" for k in ("ce", "mask", "dice") for i in range(3)}
    assert set(losses) == expected
    assert len(indices) == 6
    sum(losses.values()).backward()
    for tensor in [logits, masks] + [t for pair in aux for t in pair]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0

    unweighted, _ = criterion(logits, masks, targets, aux, weighted=False, generator=torch.Generator().manual_seed(3))
    for name, value in losses.items():
        weight = {"ce": 2.0, "mask": 5.0, "dice": 5.0}[name.split("_")[1]]
        torch.testing.assert_close(value, unweighted[name] * weight)

    plain = SetCriterion(4, CriterionConfig(num_points=256, deep_supervision=False))
    losses, _ = plain(logits, masks, targets, aux)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}


def test_loss_values_match_straightforward_formulas():
    gen = torch.Generator().manual_seed(4)
    targets = frame_targets_from_clip(random_clip(gen, frames=3, instances=3))
    logits, masks = predictions(gen, 3, requires_grad=False)
    criterion = SetCriterion(4, SMALL)
    indices = criterion.matcher(logits, masks, targets, torch.Generator().manual_seed(0))
    # Classification: empty-weighted mean cross-entropy, no-object for unmatched queries.
    target_classes = torch.full((3, 6), 4)
    for image, (rows, cols) in enumerate(indices):
        target_classes[image, rows] = targets[image]["labels"][cols]
    weights = torch.tensor([1.0] * 4 + [0.1])
    expected_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weights)
    torch.testing.assert_close(criterion.loss_labels(logits, targets, indices), expected_ce)
    # Masks: per matched pair, uncertain points on the prediction, BCE mean and dice.
    num_masks = 7.0
    loss_mask, loss_dice = criterion.loss_masks(masks, targets, indices, num_masks, torch.Generator().manual_seed(5))
    src = torch.cat([masks[i][rows] for i, (rows, _) in enumerate(indices)])[:, None]
    tgt = torch.cat([targets[i]["masks"][cols].float() for i, (_, cols) in enumerate(indices)])[:, None]
    coords = straightforward_uncertain_points(src, 256, 3.0, 0.75, torch.Generator().manual_seed(5))
    point_logits = point_sample(src, coords)[:, 0]
    point_labels = point_sample(tgt, coords)[:, 0]
    expected_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1).sum() / num_masks
    probs = point_logits.sigmoid()
    expected_dice = (1 - (2 * (probs * point_labels).sum(-1) + 1) / (probs.sum(-1) + point_labels.sum(-1) + 1)).sum() / num_masks
    torch.testing.assert_close(loss_mask, expected_mask)
    torch.testing.assert_close(loss_dice, expected_dice)


def test_num_masks_override_and_clamp():
    gen = torch.Generator().manual_seed(5)
    targets = frame_targets_from_clip(random_clip(gen, frames=2, instances=2))
    count = sum(t["labels"].numel() for t in targets)
    logits, masks = predictions(gen, 2, requires_grad=False)
    criterion = SetCriterion(4, SMALL)
    base, _ = criterion(logits, masks, targets, generator=torch.Generator().manual_seed(1))
    doubled, _ = criterion(logits, masks, targets, num_masks=2 * count, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(doubled["loss_mask"], base["loss_mask"] / 2)
    torch.testing.assert_close(doubled["loss_ce"], base["loss_ce"])
    clamped, _ = criterion(logits, masks, targets, num_masks=0.25, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(clamped["loss_dice"], base["loss_dice"] * count)


def test_frames_without_instances():
    gen = torch.Generator().manual_seed(6)
    clip = random_clip(gen, frames=2, instances=2)
    clip["ids"][:] = -1
    targets = frame_targets_from_clip(clip)
    logits, masks = predictions(gen, 2)
    losses, indices = SetCriterion(4, SMALL)(logits, masks, targets, [predictions(gen, 2)])
    assert all(rows.numel() == 0 for rows, _ in indices)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    # Everything is pushed to no-object: CE equals the plain no-object cross-entropy.
    expected = 2.0 * F.cross_entropy(logits.detach().reshape(-1, 5), torch.full((12,), 4))
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(masks.grad).all()


def test_gt_to_query_from_indices_inverts_the_matching():
    # CT-CL's own matching (all instances, unpadded masks) lives in CTVISModel._ctcl_matching and is
    # tested in tests/test_model.py; this is the index inversion it relies on.
    gen = torch.Generator().manual_seed(7)
    clips = [random_clip(gen, frames=3, instances=3)]
    logits, masks = predictions(gen, 3, requires_grad=False)
    matcher = HungarianMatcher(MatcherConfig(num_points=128))
    indices = matcher(logits, masks, frame_targets_from_clips(clips, keep_absent=True), torch.Generator().manual_seed(0))
    gt_to_query = gt_to_query_from_indices(indices, 3)
    for image, (rows, cols) in enumerate(indices):
        expected = rows[torch.argsort(cols)]
        assert torch.equal(gt_to_query[image, : len(cols)], expected)
        assert len(set(gt_to_query[image, : len(cols)].tolist())) == len(cols)
    with pytest.raises(ValueError, match="covers targets"):
        gt_to_query_from_indices([(torch.tensor([0]), torch.tensor([1]))], 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_and_matches_cpu_matching():
    gen = torch.Generator().manual_seed(8)
    targets = frame_targets_from_clip(random_clip(gen))
    logits, masks = predictions(gen, 3, requires_grad=False)
    criterion = SetCriterion(4, SMALL)
    cpu_costs, _ = criterion.matcher.cost_matrices(logits, masks, targets, torch.Generator().manual_seed(0))
    coords_gen = torch.Generator(device="cuda").manual_seed(0)
    cuda_targets = [FrameTarget(labels=t["labels"].cuda(), masks=t["masks"].cuda()) for t in targets]
    losses, _ = criterion.cuda()(logits.cuda(), masks.cuda(), cuda_targets, generator=coords_gen)
    assert all(torch.isfinite(v) for v in losses.values())
    assert cpu_costs.shape[0] == 3
