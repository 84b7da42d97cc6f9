"""R50 CTVIS forward on CPU: this implementation vs. a baseline that mirrors the original's ops.

Baseline (measured in the same run, same weights, same input):
* MSDeformAttn sampling exactly as the original ``ms_deform_attn_core_pytorch``: all queries at
  once, one stacked (B*M, D, Lq, L*P) tensor, multiply, sum;
* decoder attention through ``F.multi_head_attention_forward`` with ``need_weights=True`` and a
  head-repeated boolean mask, as ``nn.MultiheadAttention`` runs in the original.

Asserted: pixel-decoder outputs bit-identical, decoder outputs within the parity tolerances.
Prints one JSON line. Run from the repository root:

    python benchmarks/bench_forward.py [--threads 2] [--height 256 --width 448] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_official_weights  # noqa: E402
from models.ctvis import build_network  # noqa: E402
from models.layers import MultiHeadAttention  # noqa: E402
from models.ms_deform_attn import MSDeformAttn  # noqa: E402
from models.presets import NETWORK_PRESETS  # noqa: E402
from tests.weightgen import generate_official_state_dict, load_manifest  # noqa: E402


def original_ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    batch, _, heads, dim = value.shape
    _, len_q, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, len_q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * dim, len_q)
    return out.transpose(1, 2).contiguous()


class BaselineMSDeformAttn(MSDeformAttn):
    def forward(self, query, reference_points, input_flatten, spatial_shapes):
        batch, len_q, _ = query.shape
        len_in = input_flatten.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(input_flatten).view(batch, len_in, heads, self.dim // heads)
        offsets = self.sampling_offsets(query).view(batch, len_q, heads, levels, points, 2)
        weights = F.softmax(self.attention_weights(query).view(batch, len_q, heads, levels * points), -1)
        weights = weights.view(batch, len_q, heads, levels, points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.long)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(original_ms_deform_attn_core(value, spatial_shapes, locations, weights))


class BaselineAttention(MultiHeadAttention):
    def forward(self, query, key, value, blocked=None):
        mask = None if blocked is None else blocked.repeat_interleave(self.num_heads, dim=0)
        out, _ = F.multi_head_attention_forward(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), self.dim, self.num_heads,
            self.in_proj_weight, self.in_proj_bias, None, None, False, 0.0,
            self.out_proj.weight, self.out_proj.bias, training=False, need_weights=True, attn_mask=mask,
        )
        return out.transpose(0, 1)


def to_baseline(network):
    for module in network.modules():
        if type(module) is MSDeformAttn:
            module.__class__ = BaselineMSDeformAttn
        elif type(module) is MultiHeadAttention:
            module.__class__ = BaselineAttention
    return network


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-dir", default=str(ROOT.parent / "shared" / "reference"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    official = generate_official_state_dict(
        load_manifest(Path(args.reference_dir) / "model" / "manifest_r50_ytvis19.json")
    )
    ours = build_network(NETWORK_PRESETS["ctvis_r50_ytvis19"]()).eval()
    load_official_weights(ours, official, strict=True)
    baseline = to_baseline(build_network(NETWORK_PRESETS["ctvis_r50_ytvis19"]()).eval())
    load_official_weights(baseline, official, strict=True)
    del official

    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (args.frames, 3, args.height, args.width), dtype=torch.uint8, generator=generator)
    images, _ = ours.preprocess(frames)

    def run(network):
        cpu_start, faults_start = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        backbone_s, features = timed(lambda: network.backbone(images))
        pixel_s, (mask_features, multi_scale) = timed(lambda: network.pixel_decoder(features))
        decoder_s, outputs = timed(lambda: network.decoder(multi_scale, mask_features))
        cpu_s = time.process_time() - cpu_start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
        return (backbone_s + pixel_s + decoder_s, pixel_s, decoder_s, cpu_s, faults), (mask_features, multi_scale, outputs)

    times = {"ours": [], "baseline": []}
    results = {}
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        for network in (ours, baseline):  # warm-up
            run(network)
        for _ in range(args.repeats):  # interleaved, so machine load hits both alike
            for name, network in (("ours", ours), ("baseline", baseline)):
                figures, results[name] = run(network)
                times[name].append(figures)

    (mf_a, ms_a, out_a), (mf_b, ms_b, out_b) = results["ours"], results["baseline"]
    assert torch.equal(mf_a, mf_b) and all(torch.equal(a, b) for a, b in zip(ms_a, ms_b)), "pixel decoder differs"
    torch.testing.assert_close(out_a.final.logits, out_b.final.logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_a.final.embeds, out_b.final.embeds, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_a.final.masks, out_b.final.masks, atol=1e-4, rtol=1e-4)

    def med(name, index):
        return statistics.median(t[index] for t in times[name])

    print(json.dumps({
        "benchmark": "r50_forward_cpu",
        "frames": args.frames, "height": args.height, "width": args.width, "threads": args.threads,
        "repeats": args.repeats,
        "ours_total_s": round(med("ours", 0), 4),
        "ours_pixel_decoder_s": round(med("ours", 1), 4),
        "ours_pixel_decoder_share": round(med("ours", 1) / med("ours", 0), 3),
        "ours_decoder_s": round(med("ours", 2), 4),
        "baseline_total_s": round(med("baseline", 0), 4),
        "baseline_pixel_decoder_s": round(med("baseline", 1), 4),
        "baseline_decoder_s": round(med("baseline", 2), 4),
        "speedup_total": round(med("baseline", 0) / med("ours", 0), 3),
        "speedup_pixel_decoder": round(med("baseline", 1) / med("ours", 1), 3),
        "speedup_decoder": round(med("baseline", 2) / med("ours", 2), 3),
        # minimum over repeats: least disturbed by other processes on a shared machine
        "ours_total_min_s": round(min(t[0] for t in times["ours"]), 4),
        "ours_pixel_decoder_min_s": round(min(t[1] for t in times["ours"]), 4),
        "baseline_total_min_s": round(min(t[0] for t in times["baseline"]), 4),
        "baseline_pixel_decoder_min_s": round(min(t[1] for t in times["baseline"]), 4),
        "speedup_total_min": round(min(t[0] for t in times["baseline"]) / min(t[0] for t in times["ours"]), 3),
        "ours_cpu_s": round(med("ours", 3), 4),
        "baseline_cpu_s": round(med("baseline", 3), 4),
        "ours_minor_page_faults": int(med("ours", 4)),
        "baseline_minor_page_faults": int(med("baseline", 4)),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "pixel_decoder_bit_identical": True,
        "max_abs_diff_pred_logits": float((out_a.final.logits - out_b.final.logits).abs().max()),
        "max_abs_diff_pred_masks": float((out_a.final.masks - out_b.final.masks).abs().max()),
    }))


if __name__ == "__main__":
    main()
