from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.point_sampling import mask_uncertainty, point_sample, sample_uncertain_points


def test_point_sample_reads_pixel_centres_exactly():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 2, 5, 7, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, 5, (3, 11), generator=gen)
    cols = torch.randint(0, 7, (3, 11), generator=gen)
    coords = torch.stack([(cols.double() + 0.5) / 7, (rows.double() + 0.5) / 5], dim=-1)  # (x, y)
    sampled = point_sample(maps, coords)
    assert sampled.shape == (3, 2, 11)
    expected = torch.stack([maps[r][:, rows[r], cols[r]] for r in range(3)])
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)


def test_point_sample_interpolates_and_zero_pads():
    maps = torch.tensor([[[[0.0, 2.0]]]])  # 1x2 image
    coords = torch.tensor([[[0.5, 0.5], [0.0, 0.5]]])  # middle, and the left edge
    # Middle between the two pixel centres -> 1; the left edge is half-way to the zero padding.
    torch.testing.assert_close(point_sample(maps, coords), torch.tensor([[[1.0, 0.0]]]))


def test_point_sample_normalised_coords_are_scale_free():
    """A mask and its 4x nearest upsampling agree at points away from pixel borders."""
    gen = torch.Generator().manual_seed(1)
    small = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    large = F.interpolate(small, scale_factor=4, mode="nearest")
    centres = (torch.randint(0, 8, (2, 50, 2), generator=gen) + 0.5) / 8
    torch.testing.assert_close(point_sample(small, centres), point_sample(large, centres))


def straightforward_uncertain_points(logits, num_points, oversample, importance, generator):
    """detectron2's recipe spelled out with flat indexing, as a cross-check."""
    count = logits.shape[0]
    num_sampled = int(num_points * oversample)
    coords = torch.rand(count, num_sampled, 2, generator=generator)
    point_logits = point_sample(logits, coords)
    uncertainties = -point_logits.abs()
    num_uncertain = int(importance * num_points)
    idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    idx = idx + num_sampled * torch.arange(count)[:, None]
    chosen = coords.view(-1, 2)[idx.view(-1), :].view(count, num_uncertain, 2)
    if num_points - num_uncertain > 0:
        chosen = torch.cat([chosen, torch.rand(count, num_points - num_uncertain, 2, generator=generator)], dim=1)
    return chosen


@pytest.mark.parametrize("importance", [0.75, 1.0, 0.0])
def test_uncertain_points_match_straightforward_recipe(importance):
    logits = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 3
    ours = sample_uncertain_points(logits, 200, 3.0, importance, torch.Generator().manual_seed(7))
    ref = straightforward_uncertain_points(logits, 200, 3.0, importance, torch.Generator().manual_seed(7))
    assert ours.shape == (4, 200, 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert ((ours >= 0) & (ours <= 1)).all()


def test_uncertain_points_concentrate_on_the_boundary():
    # Logit = x - 0.5 scaled: the boundary is the vertical line x = 0.5.
    xs = (torch.arange(64) + 0.5) / 64
    logits = ((xs - 0.5) * 20).expand(64, 64)[None, None].repeat(2, 1, 1, 1)
    coords = sample_uncertain_points(logits[:, 0], 400, 3.0, 0.75, torch.Generator().manual_seed(3))
    important = coords[:, :300, 0]
    fresh = coords[:, 300:, 0]
    # 300 most uncertain of 1200 uniform candidates: about the quarter of the width nearest x = 0.5
    # (a few sit at the top/bottom edges, where the zero padding also pulls the logit to 0).
    assert (important - 0.5).abs().median() < 0.1
    assert (important - 0.5).abs().mean() < 0.35 * (fresh - 0.5).abs().mean()
    assert torch.equal(mask_uncertainty(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([-2.0, 0.0, -3.0]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="point_sample"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="sample_uncertain_points"):
        sample_uncertain_points(torch.zeros(2, 3, 4, 4), 10, 3.0, 0.75)
