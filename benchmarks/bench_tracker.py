"""Benchmark: vectorised tracker + video post-processing vs the straightforward loop implementation
of the released algorithm (tests/tracker_oracle.py), measured side by side in the same run on the
same synthetic video, with identical results asserted.

    /work/main/.venv/bin/python benchmarks/bench_tracker.py [--repeats 3]

Prints one JSON line. Cases: tracker over 36 frames and over 100 frames (100 queries, 120x216 mask
logits, 256-d embeddings, 40 classes): whole-video ``track_video`` (keeps references to the input,
as the released code does; also with the CPU kernel of the mask passes switched off, the torch
path accelerators run), and streaming (``VideoTracker.step_clip`` on 5-frame clips as
``infer_video`` feeds it, and one frame per call; both keep copies of the masks); post-processing
of the 36-frame tracks to 480x864 (padded = image = output size, top-40).

Times are the minimum over the repeats (the machine is shared). The tracker and the post-processing
return compact outputs; ``*_dense_*`` figures add materialising the dense tensors the released code
returns ((N, T, h, w) mask logits; (U, T, H, W) or (k, T, H, W) bool masks), which on their own cost
more than the rest of the work (page-faulting and zeroing hundreds of MB).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.tracking.cpu_kernel as cpu_kernel  # noqa: E402
from models.tracking import TrackerConfig, VideoTracker, track_video  # noqa: E402
from models.video_inference import inference_tracks  # noqa: E402
from tests.tracker_oracle import oracle_inference_video, oracle_track, synthetic_detections  # noqa: E402


def best_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_tracker(config, logits, masks, embeds, repeats):
    fast_s, (tracks, results) = best_time(lambda: track_video(config, logits, masks, embeds), repeats)

    def with_dense_masks():
        out = track_video(config, logits, masks, embeds)
        out[0].pred_masks                       # the released (N, T, h, w) tensor
        return out

    dense_s, _ = best_time(with_dense_masks, repeats)

    def torch_path():
        # The same tracker with the CPU kernel switched off: the torch path accelerators run.
        cpu_kernel.ENABLED = False
        try:
            return track_video(config, logits, masks, embeds)
        finally:
            cpu_kernel.ENABLED = True

    torch_s, (torch_tracks, _) = best_time(torch_path, repeats)
    assert torch.equal(torch_tracks.pred_masks, tracks.pred_masks)
    loop_s, (assigned, live, track_ids, out_logits, out_masks) = best_time(
        lambda: oracle_track(config, logits, masks, embeds), max(1, repeats - 1))
    assert np.array_equal(np.stack([r.assigned_ids.numpy() for r in results]), np.array(assigned))
    assert [r.live_ids.tolist() for r in results] == live
    assert torch.equal(tracks.track_ids, track_ids)
    assert torch.equal(tracks.pred_logits, out_logits) and torch.equal(tracks.pred_masks, out_masks)
    kept = float(np.mean([(r.assigned_ids >= -2).sum().item() for r in results]))

    def streaming(clip_length):
        # What infer_video does: clips of the network's output, the tracker keeps copies of its masks.
        tracker = VideoTracker(config)
        for start in range(0, logits.shape[0], clip_length):
            clip = slice(start, start + clip_length)
            tracker.step_clip(logits[clip], masks[clip], embeds[clip])
        return tracker.finalize()

    stream5_s, stream5 = best_time(lambda: streaming(5), repeats)
    stream1_s, stream1 = best_time(lambda: streaming(1), repeats)
    assert torch.equal(stream5.pred_masks, out_masks) and torch.equal(stream1.pred_masks, out_masks)
    return tracks, {"frames": int(logits.shape[0]), "tracks": len(tracks), "selected_per_frame": round(kept, 1),
                    "loop_s": round(loop_s, 4), "vectorised_s": round(fast_s, 4),
                    "speedup": round(loop_s / fast_s, 1), "torch_path_s": round(torch_s, 4),
                    "cpu_kernel_speedup": round(torch_s / fast_s, 1), "vectorised_dense_masks_s": round(dense_s, 4),
                    "speedup_dense_masks": round(loop_s / dense_s, 1),
                    "streaming_5_frame_clips_s": round(stream5_s, 4), "speedup_streaming_5": round(loop_s / stream5_s, 1),
                    "streaming_1_frame_s": round(stream1_s, 4), "speedup_streaming_1": round(loop_s / stream1_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrackerConfig()
    data = synthetic_detections(100, num_queries=100, num_classes=40, embed_dim=256, mask_size=(120, 216),
                                num_objects=22, num_distractors=6, seed=7)
    figures = {"device": "cpu", "threads": args.threads, "torch": torch.__version__}

    tracks36, figures["tracker_36_frames"] = bench_tracker(config, *(x[:36] for x in data), args.repeats)
    _, figures["tracker_100_frames"] = bench_tracker(config, *data, args.repeats)
    del data

    size = (480, 864)

    def post(materialise):
        result = inference_tracks(tracks36, size, size, size, num_topk=40)
        if materialise == "shared":
            result.track_masks                  # (U, T, H, W)
        return result, (result.masks if materialise == "entries" else None)

    compact_s, _ = best_time(lambda: post(None), args.repeats)
    shared_s, _ = best_time(lambda: post("shared"), args.repeats)
    fast_s, (result, fast_masks) = best_time(lambda: post("entries"), args.repeats)  # like the released code
    loop_s, (scores, labels, masks) = best_time(
        lambda: oracle_inference_video(tracks36.pred_logits, tracks36.pred_masks, size, size, size, num_topk=40),
        max(1, args.repeats - 1))
    assert torch.equal(result.labels, labels) and torch.equal(fast_masks, masks)
    score_diff = (result.scores - scores).abs().max().item()
    assert score_diff <= 1e-6, score_diff
    figures["postprocess_36_frames_480x864_top40"] = {
        "tracks": len(tracks36), "distinct_tracks_in_topk": int(result.track_masks.shape[0]),
        "planes_upsampled": int(result.windows.track.size),
        "loop_s": round(loop_s, 4), "vectorised_s": round(compact_s, 4), "speedup": round(loop_s / compact_s, 1),
        "vectorised_dense_shared_masks_s": round(shared_s, 4),
        "speedup_dense_shared_masks": round(loop_s / shared_s, 1),
        "vectorised_dense_entry_masks_s": round(fast_s, 4), "speedup_dense_entry_masks": round(loop_s / fast_s, 1),
        "max_abs_score_diff": score_diff}
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
