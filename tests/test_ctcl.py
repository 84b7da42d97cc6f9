"""CT-CL: parity with the released code's fixture, and the vectorised loss against the loop oracle."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models.ctcl import CTCLConfig, CTCLLoss, RandomChooser, ctcl_loss
from tests.ctcl_replay import RecordedNegativesChooser
from tests.ctcl_loop_reference import ctcl_loop

ITEM_TABLE = "item_b_t_instance_posframe_negframe_negallqueries"


class StreamChooser:
    """Recorded-choice scheme: one ``random.Random`` stream per kind of choice, consumed in call
    order. Negatives are ``rng.sample(sorted(population), k)`` -- the scheme of the held-back
    fixture case (``random.Random(22)``)."""

    def __init__(self, seed: int, noise_probability: float = 0.0) -> None:
        self.negative_rng = random.Random(seed)
        self.fused_rng = random.Random(seed + 1)
        self.noise_rng = random.Random(seed + 2)
        self.noise_probability = noise_probability
        self.negative_calls: list[list[int]] = []

    def negatives(self, calls, num_negatives):
        out = []
        for b, t, n, anchor in calls.tolist():
            self.negative_calls.append([b, t, n, anchor])
            population = set(range(num_negatives + 1)) - {anchor}
            out.append(sorted(self.negative_rng.sample(sorted(population), num_negatives)))
        return torch.tensor(out, dtype=torch.int64).reshape(len(out), num_negatives)

    def fused_positive(self, items):
        return torch.tensor([self.fused_rng.random() > 0.5 for _ in range(items.shape[0])], dtype=torch.bool)

    def noise_queries(self, calls, num_queries):
        out = []
        for _ in range(calls.shape[0]):
            noisy = self.noise_rng.random() < self.noise_probability
            out.append(self.noise_rng.randint(0, num_queries - 1) if noisy else -1)
        return torch.tensor(out, dtype=torch.int64)


def load_case1(reference_dir):
    data = np.load(reference_dir / "model" / "ctcl_case1_allneg.npz")
    batch = int(data["B"])
    embeds = [torch.from_numpy(data[f"embeds_b{b}"]) for b in range(batch)]
    gt_to_query = [torch.from_numpy(data[f"gt2query_b{b}"]) for b in range(batch)]
    valid = [torch.from_numpy(data[f"valid_b{b}"]) for b in range(batch)]
    return data, embeds, gt_to_query, valid


def pad_clips(gt_to_query, valid, padding_query=0):
    """Stack clips of their own N into (B, T, N_max) with invalid padding columns."""
    batch, frames = len(gt_to_query), gt_to_query[0].shape[0]
    n_max = max(g.shape[1] for g in gt_to_query)
    g2q = torch.full((batch, frames, n_max), padding_query, dtype=torch.int64)
    val = torch.zeros(batch, frames, n_max, dtype=torch.bool)
    for b, (g, v) in enumerate(zip(gt_to_query, valid)):
        g2q[b, :, : g.shape[1]] = g
        val[b, :, : v.shape[1]] = v
    return g2q, val


def random_case(seed, batch=2, frames=6, queries=12, channels=8, n_range=(1, 5), absent_rate=0.35, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    embeds, gt_to_query, valid = [], [], []
    for _ in range(batch):
        n = int(torch.randint(n_range[0], n_range[1] + 1, (1,), generator=gen))
        embeds.append(torch.randn(frames, queries, channels, generator=gen, dtype=dtype))
        # Distinct matched queries per frame, as a matching gives.
        gt_to_query.append(torch.stack([torch.randperm(queries, generator=gen)[:n] for _ in range(frames)]))
        # Per-instance absence rates around absent_rate, so late appearances (the exist_after
        # quirk) and long gaps both occur.
        rate = (absent_rate * 2 * torch.rand(1, n, generator=gen)).clamp(max=0.9)
        valid.append(torch.rand(frames, n, generator=gen) > rate)
    return embeds, gt_to_query, valid


# ---------------------------------------------------------------- parity with the released code


@pytest.mark.parity
def test_case1_matches_released_fixture(reference_dir):
    data, embeds, gt_to_query, valid = load_case1(reference_dir)
    g2q, val = pad_clips(gt_to_query, valid)
    config = CTCLConfig(
        num_negatives=int(data["num_negatives"]),
        reid_weight=float(data["reid_weight"]),
        aux_reid_weight=float(data["aux_reid_weight"]),
        momentum_embed=False,
    )
    out = ctcl_loss(torch.stack(embeds), g2q, val, config)
    rtol = 1e-5
    np.testing.assert_allclose(out.loss_reid_unweighted.item(), data["loss_reid_unweighted"], rtol=rtol)
    np.testing.assert_allclose(out.loss_aux_reid_unweighted.item(), data["loss_aux_reid_unweighted"], rtol=rtol)
    np.testing.assert_allclose(out.loss_reid.item(), data["loss_reid_weighted"], rtol=rtol)
    np.testing.assert_allclose(out.loss_aux_reid.item(), data["loss_aux_reid_weighted"], rtol=rtol)
    assert out.num_items == int(data["num_items"])
    np.testing.assert_array_equal(out.items.numpy(), data[ITEM_TABLE])
    np.testing.assert_array_equal(out.num_candidates.numpy(), data["item_num_candidates"])
    np.testing.assert_allclose(out.item_loss_reid.numpy(), data["item_loss_reid_f64"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.item_loss_aux_reid.numpy(), data["item_loss_aux_reid_f64"], rtol=1e-5, atol=1e-7)

    out64 = ctcl_loss(torch.stack(embeds).double(), g2q, val, config)
    assert abs(out64.loss_reid_unweighted.item() - float(data["loss_reid_unweighted_f64"])) < 1e-9
    assert abs(out64.loss_aux_reid_unweighted.item() - float(data["loss_aux_reid_unweighted_f64"])) < 1e-9
    np.testing.assert_allclose(out64.item_loss_reid.numpy(), data["item_loss_reid_f64"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out64.item_loss_aux_reid.numpy(), data["item_loss_aux_reid_f64"], rtol=0, atol=1e-9)

    # The module form returns the weighted dict.
    losses = CTCLLoss(config)(torch.stack(embeds), g2q, val)
    assert set(losses) == {"loss_reid", "loss_aux_reid"}
    np.testing.assert_allclose(losses["loss_reid"].item(), data["loss_reid_weighted"], rtol=rtol)


@pytest.mark.parity
def test_case1_sampling_calls_and_recorded_replay(reference_dir):
    data, embeds, gt_to_query, valid = load_case1(reference_dir)
    g2q, val = pad_clips(gt_to_query, valid, padding_query=10**6)  # padding ids must never be read
    config = CTCLConfig(num_negatives=int(data["num_negatives"]), momentum_embed=False)
    recorded_calls = torch.from_numpy(data["sample_call_b_t_instance_anchorquery"])
    recorded_negatives = torch.from_numpy(data["sample_call_negatives_sorted"])

    seen = []

    class Spy(RandomChooser):
        def negatives(self, calls, num_negatives):
            drawn = super().negatives(calls, num_negatives)
            seen.append((calls.clone(), drawn.clone()))
            return drawn

    out = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=Spy())
    (calls, drawn), = seen
    np.testing.assert_array_equal(calls.numpy(), recorded_calls.numpy())  # same calls, same order
    np.testing.assert_array_equal(drawn.numpy(), recorded_negatives.numpy())  # K = Q-1: deterministic

    replay = RecordedNegativesChooser(recorded_calls, recorded_negatives)
    replayed = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=replay)
    assert torch.equal(replayed.items, out.items)
    torch.testing.assert_close(replayed.loss_reid, out.loss_reid, rtol=0, atol=0)


@pytest.mark.parity
def test_loop_oracle_reproduces_case1(reference_dir):
    data, embeds, gt_to_query, valid = load_case1(reference_dir)
    config = CTCLConfig(num_negatives=int(data["num_negatives"]), momentum_embed=False)
    ref = ctcl_loop([e.double() for e in embeds], gt_to_query, valid, config, RandomChooser())
    assert abs(ref["loss_reid_unweighted"].item() - float(data["loss_reid_unweighted_f64"])) < 1e-9
    assert abs(ref["loss_aux_reid_unweighted"].item() - float(data["loss_aux_reid_unweighted_f64"])) < 1e-9
    np.testing.assert_array_equal(ref["items"].numpy(), data[ITEM_TABLE])


def test_exist_after_quirk_on_released_example():
    """Case 1, b=1, n=3 (presence 00010100): frame 3 has no earlier frame and 3 absent frames
    after it, so ``exist_after(3)`` is False and frame 3 makes no item; frame 5 uses frame 3."""
    valid = torch.tensor([0, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool)[None, :, None]
    embeds = torch.randn(1, 8, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g2q = torch.zeros(1, 8, 1, dtype=torch.int64)
    out = ctcl_loss(embeds, g2q, valid, CTCLConfig(num_negatives=3, momentum_embed=False))
    assert out.items.tolist() == [[0, 5, 0, 3, 4, 1]]
    # Presence 0100: t=1 has 2 absent frames after it (!= 1) but none present: no item either.
    out = ctcl_loss(embeds[:, :4], g2q[:, :4], torch.tensor([0, 1, 0, 0], dtype=torch.bool)[None, :, None],
                    CTCLConfig(num_negatives=3, momentum_embed=False))
    assert out.num_items == 0
    # Presence 0110... with t=1 first present and 1 absent frame after => exist_after(1) is False.
    out = ctcl_loss(embeds[:, :4], g2q[:, :4], torch.tensor([0, 1, 1, 0], dtype=torch.bool)[None, :, None],
                    CTCLConfig(num_negatives=3, momentum_embed=False))
    assert out.items[:, :4].tolist() == [[0, 2, 0, 1]]


# ---------------------------------------------------------------- against the loop oracle


@pytest.mark.parametrize("negatives", ["released", "paper"])
@pytest.mark.parametrize("momentum_embed", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_equals_loop_oracle_with_replayed_choices(seed, momentum_embed, negatives):
    embeds, gt_to_query, valid = random_case(seed, batch=3, frames=7, queries=12)
    num_negatives = 5 if seed != 3 else 11  # < Q-1: anchors above the range drop one at random
    config = CTCLConfig(num_negatives=num_negatives, momentum_embed=momentum_embed, negatives=negatives)
    ref = ctcl_loop(embeds, gt_to_query, valid, config, StreamChooser(22 + seed))
    g2q, val = pad_clips(gt_to_query, valid, padding_query=-7)
    vec_chooser = StreamChooser(22 + seed)
    out = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=vec_chooser)
    assert out.num_items == ref["items"].shape[0] > 0
    assert torch.equal(out.items, ref["items"])
    assert torch.equal(out.num_candidates, ref["num_candidates"])
    assert torch.equal(out.fused_positive, ref["fused_positive"])
    torch.testing.assert_close(out.item_loss_reid, ref["item_loss_reid"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.item_loss_aux_reid, ref["item_loss_aux_reid"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss_reid, ref["loss_reid"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss_aux_reid, ref["loss_aux_reid"], rtol=1e-10, atol=1e-12)
    if momentum_embed:
        assert out.fused_positive.any() and not out.fused_positive.all()


@pytest.mark.parametrize("negatives", ["released", "paper"])
def test_noise_embed_equals_loop_oracle(negatives):
    embeds, gt_to_query, valid = random_case(7, batch=2, frames=8, queries=10, absent_rate=0.5)
    config = CTCLConfig(num_negatives=6, momentum_embed=True, noise_embed=True, negatives=negatives)
    # A high noise rate so that the noise path is exercised; the released rate is 0.001.
    ref = ctcl_loop(embeds, gt_to_query, valid, config, StreamChooser(5, noise_probability=0.4))
    g2q, val = pad_clips(gt_to_query, valid)
    # Every column below N_b is a real instance, even one absent from the whole clip (it can
    # receive noise in the released code too).
    real = torch.zeros(val.shape[0], val.shape[2], dtype=torch.bool)
    for b, g in enumerate(gt_to_query):
        real[b, : g.shape[1]] = True
    out = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=StreamChooser(5, noise_probability=0.4), instance_mask=real)
    assert torch.equal(out.items, ref["items"])
    # Some items are anchored on a noise-filled (absent) frame.
    anchored_absent = ~val[out.items[:, 0], out.items[:, 1], out.items[:, 2]]
    assert anchored_absent.any()
    torch.testing.assert_close(out.item_loss_reid, ref["item_loss_reid"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss_aux_reid, ref["loss_aux_reid"], rtol=1e-10, atol=1e-12)


def test_gradients_flow_and_match_loop_oracle():
    embeds, gt_to_query, valid = random_case(11, batch=2, frames=6, queries=10)
    config = CTCLConfig(num_negatives=4, momentum_embed=True, negatives="paper")
    stacked = torch.stack(embeds).requires_grad_(True)
    g2q, val = pad_clips(gt_to_query, valid)
    out = ctcl_loss(stacked, g2q, val, config, chooser=StreamChooser(3))
    (out.loss_reid + out.loss_aux_reid).backward()
    assert torch.isfinite(stacked.grad).all() and stacked.grad.abs().sum() > 0

    leaves = [e.clone().requires_grad_(True) for e in embeds]
    ref = ctcl_loop(leaves, gt_to_query, valid, config, StreamChooser(3))
    (ref["loss_reid"] + ref["loss_aux_reid"]).backward()
    for b, leaf in enumerate(leaves):
        torch.testing.assert_close(stacked.grad[b], leaf.grad, rtol=1e-9, atol=1e-12)


def test_padding_columns_never_create_items():
    embeds, gt_to_query, valid = random_case(4, batch=3, frames=5, queries=9, n_range=(1, 4))
    config = CTCLConfig(num_negatives=8, momentum_embed=False, noise_embed=True)
    g2q, val = pad_clips(gt_to_query, valid, padding_query=10**9)
    out = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=StreamChooser(0, noise_probability=1.0))
    for b, g in enumerate(gt_to_query):
        assert (out.items[out.items[:, 0] == b, 2] < g.shape[1]).all()
    # Each clip alone gives the same items as the padded batch (noise off: no shared stream).
    config = CTCLConfig(num_negatives=8, momentum_embed=False)
    out = ctcl_loss(torch.stack(embeds), g2q, val, config)
    for b in range(3):
        alone = ctcl_loss(embeds[b][None], gt_to_query[b][None], valid[b][None], config)
        rows = out.items[:, 0] == b
        assert torch.equal(out.items[rows][:, 1:], alone.items[:, 1:])
        torch.testing.assert_close(out.item_loss_reid[rows], alone.item_loss_reid)


def test_no_items_gives_connected_zero():
    embeds = torch.randn(2, 4, 6, 5, requires_grad=True)
    valid = torch.zeros(2, 4, 3, dtype=torch.bool)
    valid[0, 0, 1] = True  # present only at frame 0: no item
    out = ctcl_loss(embeds, torch.zeros(2, 4, 3, dtype=torch.int64), valid, CTCLConfig(num_negatives=5))
    assert out.num_items == 0 and out.loss_reid.item() == 0 and out.loss_aux_reid.item() == 0
    out.loss_reid.backward()
    assert embeds.grad is not None and torch.equal(embeds.grad, torch.zeros_like(embeds))


def test_random_chooser_negatives_follow_released_distribution():
    gen = torch.Generator().manual_seed(0)
    k = 7
    anchors = torch.tensor([0, 3, 7, 8, 50, 99] * 200)
    calls = torch.stack([torch.zeros_like(anchors)] * 3 + [anchors], dim=1)
    drawn = RandomChooser(gen).negatives(calls, k)
    assert drawn.shape == (anchors.shape[0], k)
    assert (drawn[:, 1:] > drawn[:, :-1]).all()  # sorted, distinct
    assert ((drawn >= 0) & (drawn <= k)).all()
    assert not (drawn == anchors[:, None]).any()
    inside = anchors <= k
    assert (drawn[inside].sum(1) == k * (k + 1) // 2 - anchors[inside]).all()  # all the others
    dropped = k * (k + 1) // 2 - drawn[~inside].sum(1)
    counts = torch.bincount(dropped, minlength=k + 1)
    assert (counts > 0).all()  # every one of the k+1 can be dropped


def test_config_and_input_errors():
    embeds = torch.randn(1, 3, 5, 4)
    g2q = torch.zeros(1, 3, 2, dtype=torch.int64)
    valid = torch.ones(1, 3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="num_negatives"):
        ctcl_loss(embeds, g2q, valid, CTCLConfig(num_negatives=5))
    with pytest.raises(ValueError, match="valid"):
        ctcl_loss(embeds, g2q, valid.long(), CTCLConfig(num_negatives=4))
    with pytest.raises(ValueError, match="outside"):
        ctcl_loss(embeds, g2q + 5, valid, CTCLConfig(num_negatives=4))
    with pytest.raises(KeyError, match="no recorded negatives"):
        chooser = RecordedNegativesChooser(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[1, 2, 3, 4]]))
        ctcl_loss(embeds, g2q, valid, CTCLConfig(num_negatives=4), chooser=chooser)


def test_default_random_choices_are_reproducible_with_a_generator():
    embeds, gt_to_query, valid = random_case(9, batch=2, frames=6, queries=12, dtype=torch.float32)
    g2q, val = pad_clips(gt_to_query, valid)
    config = CTCLConfig(num_negatives=5, momentum_embed=True)
    first = ctcl_loss(torch.stack(embeds), g2q, val, config, generator=torch.Generator().manual_seed(5))
    second = ctcl_loss(torch.stack(embeds), g2q, val, config, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.loss_reid, second.loss_reid) and torch.equal(first.fused_positive, second.fused_positive)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    embeds, gt_to_query, valid = random_case(12, batch=2, frames=6, queries=12)
    g2q, val = pad_clips(gt_to_query, valid)
    config = CTCLConfig(num_negatives=5, momentum_embed=True, negatives="paper")
    cpu = ctcl_loss(torch.stack(embeds), g2q, val, config, chooser=StreamChooser(1))
    gpu = ctcl_loss(torch.stack(embeds).cuda(), g2q.cuda(), val.cuda(), config, chooser=StreamChooser(1))
    torch.testing.assert_close(gpu.loss_reid.cpu(), cpu.loss_reid)
    assert torch.equal(gpu.items.cpu(), cpu.items)
