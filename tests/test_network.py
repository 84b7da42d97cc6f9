"""Unit tests of the network pieces that the parity fixtures do not pin down: the tiny preset
(forward/backward on CPU), presets, the attention-mask rules, Swin padding, MSDeformAttn."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.ctvis import NetworkConfig, build_network
from models.ms_deform_attn import MSDeformAttn, ms_deform_attn_sample
from models.presets import NETWORK_PRESETS, network_preset, tiny_network
from models.transformer_decoder import MaskedTransformerDecoder
from tests.mask_boxes import normalized_mask_boxes


def test_tiny_forward_shapes_and_backward():
    torch.manual_seed(0)
    config = tiny_network()
    network = build_network(config).train()
    frames = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    images, sizes = network.preprocess(frames)
    assert images.shape == (2, 3, 96, 96) and sizes == [(96, 96)] * 2
    outputs = network(images)
    q, k, c = config.transformer_decoder.num_queries, config.num_classes, config.transformer_decoder.hidden_dim
    final = outputs.final
    assert final.logits.shape == (2, q, k + 1) and final.num_frames == 2
    assert final.masks.shape == (2, q, 24, 24)
    assert final.embeds.shape == (2, q, c)
    assert final.queries.shape == (2, q, c)
    assert len(outputs.aux) == config.transformer_decoder.num_layers
    assert outputs.attn_mask_logits is None and outputs.mask_features is None  # only on request
    for aux in outputs.aux:
        assert aux.logits.shape == (2, q, k + 1) and aux.masks.shape == (2, q, 24, 24)
    loss = sum(
        out.logits.logsumexp(-1).mean() + out.masks.sigmoid().mean() + out.embeds.pow(2).mean()
        for out in [outputs.final, *outputs.aux]
    )
    loss.backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())
    # sampling offsets receive gradient through grid_sample
    assert network.pixel_decoder.encoder_layers[0].attention.sampling_offsets.weight.grad.abs().sum() > 0


def test_presets_build_with_expected_sizes():
    expected = {
        "ctvis_r50_ytvis19": (40, 100, "resnet50"),
        "ctvis_r50_ytvis21": (40, 100, "resnet50"),
        "ctvis_r50_ovis": (25, 100, "resnet50"),
        "ctvis_swinl_ytvis19": (40, 200, "swin_large"),
        "ctvis_swinl_ytvis21": (40, 200, "swin_large"),
        "ctvis_swinl_ovis": (25, 200, "swin_large"),
        "tiny": (3, 16, "tiny"),
    }
    assert set(NETWORK_PRESETS) == set(expected)
    for name, (classes, queries, kind) in expected.items():
        config = network_preset(name)
        assert (config.num_classes, config.transformer_decoder.num_queries, config.backbone.kind) == (classes, queries, kind)
        with torch.device("meta"):
            network = build_network(config)
        assert network.decoder.class_head.out_features == classes + 1
    assert NetworkConfig() == network_preset("ctvis_r50_ytvis19")
    with pytest.raises(KeyError, match="unknown network preset"):
        network_preset("ctvis_r101")


def test_unknown_backbone_kind_is_rejected():
    config = replace(tiny_network(), backbone=replace(tiny_network().backbone, kind="resnet101"))
    with pytest.raises(ValueError, match="resnet101"):
        build_network(config)


def _decoder_with_constant_masks(sign: float):
    torch.manual_seed(0)
    decoder = MaskedTransformerDecoder(in_channels=32, mask_dim=32, num_classes=3, hidden_dim=32, num_queries=5,
                                       num_heads=4, ffn_dim=64, num_layers=3, reid_hidden_dim=32).eval()
    with torch.no_grad():  # mask embedding = all ones, so every mask logit = sum of mask features
        decoder.mask_head.layers[-1].weight.zero_()
        decoder.mask_head.layers[-1].bias.fill_(1.0)
    features = [torch.randn(2, 32, s, s, generator=torch.Generator().manual_seed(s)) for s in (2, 4, 8)]
    mask_features = torch.full((2, 32, 16, 16), sign)
    return decoder(features, mask_features, return_attention_logits=True)


def test_fully_blocked_attention_rows_are_unblocked():
    """All mask logits negative blocks every key of every query; the original then lets those
    queries attend everywhere, i.e. exactly what all-positive logits (nothing blocked) give."""
    blocked = _decoder_with_constant_masks(-1.0)
    allowed = _decoder_with_constant_masks(+1.0)
    assert all((logits < 0).all() for logits in blocked.attn_mask_logits)
    assert torch.isfinite(blocked.final.logits).all()
    torch.testing.assert_close(blocked.final.logits, allowed.final.logits, rtol=0, atol=0)
    torch.testing.assert_close(blocked.final.embeds, allowed.final.embeds, rtol=0, atol=0)


def test_attention_mask_uses_previous_prediction_at_next_level():
    outputs = _decoder_with_constant_masks(1.0)
    sizes = [tuple(l.shape[-2:]) for l in outputs.attn_mask_logits]
    assert sizes == [(2, 2), (4, 4), (8, 8)]


def test_mask_boxes_follow_bitmask_rules():
    logits = -torch.ones(3, 6, 8)
    logits[0, 1:4, 2:5] = 1.0  # rows 1..3, cols 2..4
    logits[1, 5, 7] = 1.0
    boxes = normalized_mask_boxes(logits)  # logits[2] is empty
    expected = torch.tensor([[2 / 8, 1 / 6, 5 / 8, 4 / 6], [7 / 8, 5 / 6, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(boxes, expected)


def _loop_reference_sample(value, shapes, locations, weights):
    """Straightforward per-point bilinear sampling (pixel centres at +0.5, zeros outside)."""
    batch, _, heads, dim = value.shape
    _, len_q, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, len_q, heads, dim, dtype=torch.float64)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(len_q):
            for m in range(heads):
                for l, (h, w) in enumerate(shapes):
                    grid = value[b, starts[l]:starts[l + 1], m].double().view(h, w, dim)
                    for p in range(points):
                        x = locations[b, q, m, l, p, 0].item() * w - 0.5
                        y = locations[b, q, m, l, p, 1].item() * h - 0.5
                        x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
                        acc = torch.zeros(dim, dtype=torch.float64)
                        for dy in (0, 1):
                            for dx in (0, 1):
                                xi, yi = x0 + dx, y0 + dy
                                if 0 <= xi < w and 0 <= yi < h:
                                    acc += (1 - abs(x - xi)) * (1 - abs(y - yi)) * grid[yi, xi]
                        out[b, q, m] += weights[b, q, m, l, p].item() * acc
    return out.view(batch, len_q, heads * dim)


def test_ms_deform_attn_sampling_matches_loop_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 3), (4, 5), (7, 6)]
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(2, tokens, 2, 4, generator=g)
    locations = torch.rand(2, 9, 2, 3, 2, 2, generator=g) * 1.4 - 0.2  # some points fall outside
    weights = torch.softmax(torch.randn(2, 9, 2, 6, generator=g), -1).view(2, 9, 2, 3, 2)
    reference = _loop_reference_sample(value, shapes, locations, weights)
    full = ms_deform_attn_sample(value, shapes, locations, weights, query_chunk=1000)
    torch.testing.assert_close(full.double(), reference, rtol=1e-5, atol=1e-6)
    for chunk in (1, 2, 4, 7):
        assert torch.equal(ms_deform_attn_sample(value, shapes, locations, weights, query_chunk=chunk), full)
    # the autograd path computes the same numbers
    grad_value = value.clone().requires_grad_(True)
    with_grad = ms_deform_attn_sample(grad_value, shapes, locations, weights)
    assert torch.equal(with_grad.detach(), full)
    with_grad.sum().backward()
    assert torch.isfinite(grad_value.grad).all()


def test_ms_deform_attn_rejects_wrong_shapes():
    module = MSDeformAttn(dim=16, num_levels=2, num_heads=2, num_points=2)
    with pytest.raises(ValueError, match="do not cover"):
        module(torch.zeros(1, 5, 16), torch.zeros(1, 5, 2, 2), torch.zeros(1, 5, 16), [(2, 2), (2, 2)])


def test_swin_block_pads_odd_grids_and_drop_path_only_in_training():
    from models.backbones.swin import SwinBackbone

    torch.manual_seed(0)
    swin = SwinBackbone(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3,
                        drop_path_rate=0.5).eval()
    images = torch.randn(1, 3, 50, 38)  # 50x38 -> token grids 13x10, 7x5, 4x3, 2x2: all padded
    outputs = swin(images)
    assert [tuple(o.shape) for o in outputs.values()] == [(1, 8, 13, 10), (1, 16, 7, 5), (1, 32, 4, 3), (1, 64, 2, 2)]
    again = swin(images)
    assert all(torch.equal(outputs[k], again[k]) for k in outputs)  # eval: no stochastic depth
    swin.train()
    torch.manual_seed(1)
    trained = swin(images)
    assert any(not torch.equal(outputs[k], trained[k]) for k in outputs)


def test_swin_shift_mask_regions():
    from models.backbones.swin import shifted_window_mask

    mask = shifted_window_mask(6, 6, window_size=3, shift=1, device=torch.device("cpu"))
    assert mask.shape == (4, 9, 9)
    assert (mask[0] == 0).all()  # the top-left window never mixes regions
    # the bottom-right window mixes 4 regions: token 0 (row 0, col 0) only sees its own region
    assert mask[3, 0].tolist() == [0, 0, -100, 0, 0, -100, -100, -100, -100]


def test_tiny_runs_under_cpu_autocast():
    """AMP: the pixel decoder runs in float32 inside autocast, the rest in bfloat16."""
    torch.manual_seed(0)
    network = build_network(tiny_network()).train()
    images, _ = network.preprocess(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = network(images, return_intermediates=True)
        loss = outputs.final.logits.float().logsumexp(-1).mean() + outputs.final.masks.float().sigmoid().mean()
    assert outputs.mask_features.dtype == torch.float32
    assert outputs.final.logits.dtype == torch.bfloat16
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
