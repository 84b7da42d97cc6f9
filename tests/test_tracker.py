"""Online tracker: parity with the released SimpleTracker fixture, streaming == whole video, and every
option against the loop oracle plus small hand-made cases with asserted behaviour."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import models.tracking.cpu_kernel as cpu_kernel
from models.tracking import (BELOW_SELECT_THR, NO_TRACK_ID, REMOVED_BY_NMS, TrackerConfig, VideoTracker, VideoTracks,
                             band_height, binarize_mask_logits, greedy_match, hungarian_match, mask_nms_keep, track_video)
from models.tracking.cpu_kernel import CpuMaskPasses, _band_pixel_counts
from models.tracking.detection import MaskPasses
from tests.tracker_oracle import oracle_track, synthetic_detections


@pytest.fixture(scope="module")
def fixture(reference_dir):
    data = np.load(reference_dir / "model" / "tracker_r50_ytvis19.npz")
    return {key: data[key] for key in data.files}


def _inputs(fixture):
    return (torch.from_numpy(fixture["in_pred_logits"]), torch.from_numpy(fixture["in_pred_masks"]),
            torch.from_numpy(fixture["in_pred_embeds"]))


def _live_matrix(results, width):
    live = np.zeros((len(results), width), dtype=np.uint8)
    for t, result in enumerate(results):
        live[t, result.live_ids.numpy()] = 1
    return live


def _assert_matches_fixture(tracks, results, fixture):
    assigned = np.stack([r.assigned_ids.numpy() for r in results])
    np.testing.assert_array_equal(assigned, fixture["frame_assigned_id"])
    np.testing.assert_array_equal(_live_matrix(results, fixture["frame_live_tracklet_ids"].shape[1]),
                                  fixture["frame_live_tracklet_ids"])
    np.testing.assert_array_equal(tracks.track_ids.numpy(), fixture["out_track_ids"])
    np.testing.assert_allclose(tracks.pred_logits.numpy(), fixture["out_pred_logits"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(tracks.pred_masks.numpy(), fixture["out_pred_masks"])


@pytest.mark.parity
def test_whole_video_matches_released_tracker(fixture):
    tracks, results = track_video(TrackerConfig(), *_inputs(fixture))
    _assert_matches_fixture(tracks, results, fixture)


@pytest.mark.parity
def test_streaming_matches_released_tracker_and_prefixes(fixture):
    logits, masks, embeds = _inputs(fixture)
    config = TrackerConfig()
    tracker = VideoTracker(config)
    results = []
    for t in range(logits.shape[0]):
        results.append(tracker.step(logits[t], masks[t], embeds[t]))
        if t in (5, 12):
            # current_tracks() mid-video == the whole-video tracker run on that prefix.
            prefix, _ = track_video(config, logits[:t + 1], masks[:t + 1], embeds[:t + 1])
            now = tracker.current_tracks()
            assert torch.equal(now.track_ids, prefix.track_ids)
            assert torch.equal(now.pred_logits, prefix.pred_logits)
            assert torch.equal(now.pred_masks, prefix.pred_masks)
    _assert_matches_fixture(tracker.finalize(), results, fixture)
    with pytest.raises(RuntimeError, match="after finalize"):
        tracker.step(logits[0], masks[0], embeds[0])


CONFIG_VARIANTS = [
    {},
    {"match_type": "hungarian"},
    {"match_metric": "cosine", "match_score_thr": 0.5},
    {"embed_type": "momentum"},
    {"embed_type": "last"},
    {"embed_type": "temporally_weighted"},
    {"frame_weight": False},
    {"temporal_score_type": "max"},
    {"num_dead_frames": 3, "max_cache": 3},
]


@pytest.mark.parametrize("variant", CONFIG_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_every_option_matches_loop_oracle(variant):
    config = TrackerConfig(**variant)
    for seed in (0, 1):
        logits, masks, embeds = synthetic_detections(24, seed=seed)
        tracks, results = track_video(config, logits, masks, embeds)
        assigned, live, track_ids, out_logits, out_masks = oracle_track(config, logits, masks, embeds)
        np.testing.assert_array_equal(np.stack([r.assigned_ids.numpy() for r in results]), np.array(assigned))
        assert [r.live_ids.tolist() for r in results] == live
        assert torch.equal(tracks.track_ids, track_ids)
        assert torch.equal(tracks.pred_logits, out_logits)
        assert torch.equal(tracks.pred_masks, out_masks)


def test_options_change_behaviour():
    """The variants are not silently the default: on the same video they assign differently."""
    logits, masks, embeds = synthetic_detections(24, seed=0)
    default = np.stack([r.assigned_ids.numpy() for r in track_video(TrackerConfig(), logits, masks, embeds)[1]])
    for variant in ({"match_type": "hungarian"}, {"embed_type": "last"}, {"frame_weight": False}):
        other = np.stack([r.assigned_ids.numpy()
                          for r in track_video(TrackerConfig(**variant), logits, masks, embeds)[1]])
        assert not np.array_equal(default, other), variant


def test_memory_slots_grow_and_are_reused_like_the_oracle():
    """Many short tracklets: the bank outgrows its initial 64 slots and reuses dead ones; the
    insertion order (match columns) must still be the released dict order."""
    config = TrackerConfig(num_dead_frames=6)
    logits, masks, embeds = synthetic_detections(40, num_queries=60, num_distractors=30, seed=5)
    tracker = VideoTracker(config)
    results = [tracker.step(logits[t], masks[t], embeds[t]) for t in range(logits.shape[0])]
    assert tracker._memory.slot_ids.size > 64 and tracker._memory.free_slots   # grew, and has freed slots
    assigned, live, track_ids, out_logits, out_masks = oracle_track(config, logits, masks, embeds)
    np.testing.assert_array_equal(np.stack([r.assigned_ids.numpy() for r in results]), np.array(assigned))
    assert [r.live_ids.tolist() for r in results] == live
    tracks = tracker.finalize()
    assert torch.equal(tracks.track_ids, track_ids) and torch.equal(tracks.pred_masks, out_masks)


def test_compact_tracks_equal_their_dense_form():
    logits, masks, embeds = synthetic_detections(16, seed=3)
    tracks, _ = track_video(TrackerConfig(), logits, masks, embeds)
    assert tracks.frame_masks is not None and len(tracks.frame_masks) == 16
    dense = VideoTracks(tracks.track_ids, tracks.pred_logits, tracks.pred_masks.clone())
    assert dense.num_frames == tracks.num_frames == 16 and dense.mask_size == tracks.mask_size == (24, 40)
    recorded = tracks.recorded
    # Recorded planes are exactly the non-zero ones (masks of tracked queries are never all zero here).
    np.testing.assert_array_equal(recorded, tracks.pred_masks.flatten(2).ne(0).any(-1).numpy())
    rows, frames = np.nonzero(recorded)
    assert torch.equal(tracks.planes(rows, frames), dense.planes(rows, frames))
    assert torch.equal(tracks.planes(rows, frames), tracks.pred_masks[torch.from_numpy(rows), torch.from_numpy(frames)])
    absent_row, absent_frame = (int(v[0]) for v in np.nonzero(~recorded))
    with pytest.raises(ValueError, match="absent"):
        tracks.planes(np.array([absent_row]), np.array([absent_frame]))
    with pytest.raises(ValueError, match="either pred_masks"):
        VideoTracks(tracks.track_ids, tracks.pred_logits)
    with pytest.raises(ValueError, match="mask_rows must be"):
        VideoTracks(tracks.track_ids, tracks.pred_logits, frame_masks=tracks.frame_masks,
                    mask_rows=tracks.mask_rows[:, :3])


# ---- hand-made cases -------------------------------------------------------------------------


def _frame(scores_by_query, embeds, masks=None, num_classes=3):
    """One frame: query q has its best class probability ~ scores_by_query[q]."""
    num_queries = len(scores_by_query)
    logits = torch.full((num_queries, num_classes + 1), -20.0)
    for q, score in enumerate(scores_by_query):
        logits[q, 0] = float(np.log(score))
        logits[q, num_classes] = float(np.log(1 - score))
    if masks is None:
        masks = torch.full((num_queries, 8, 8), -5.0)
        for q in range(num_queries):  # disjoint masks: no NMS
            masks[q, q % 8, :] = 5.0
    return logits, masks, torch.as_tensor(embeds, dtype=torch.float32)


def test_select_threshold_nms_and_codes():
    masks = torch.full((4, 8, 8), -5.0)
    masks[0, :4] = 5.0
    masks[1, :4] = 5.0           # duplicate of query 0 with a lower score -> NMS
    masks[2, 4:] = 5.0
    logits, masks, embeds = _frame([0.9, 0.8, 0.7, 0.001], torch.eye(4), masks)
    result = VideoTracker(TrackerConfig()).step(logits, masks, embeds)
    assert result.assigned_ids.tolist() == [0, REMOVED_BY_NMS, 1, BELOW_SELECT_THR]
    assert result.query_indices.tolist() == [0, 2] and result.track_ids.tolist() == [0, 1]


def test_top_detection_kept_when_none_passes_and_no_init_below_threshold():
    tracker = VideoTracker(TrackerConfig())
    logits, masks, embeds = _frame([0.004, 0.008, 0.002], torch.eye(3))
    result = tracker.step(logits, masks, embeds)
    # query 1 is the top one: kept (not -3) but below init_score_thr, so it gets no id.
    assert result.assigned_ids.tolist() == [BELOW_SELECT_THR, NO_TRACK_ID, BELOW_SELECT_THR]
    assert result.live_ids.numel() == 0
    # The tracker has not started: the next frame initialises like a first frame.
    logits, masks, embeds = _frame([0.9, 0.8], torch.eye(3)[:2])
    assert tracker.step(logits, masks, embeds).assigned_ids.tolist() == [0, 1]


def test_dead_tracklets_leave_the_memory_and_new_ids_follow():
    config = TrackerConfig(num_dead_frames=2)
    tracker = VideoTracker(config)
    eye = torch.eye(4) * 10
    tracker.step(*_frame([0.9, 0.8], eye[:2]))              # frame 0: ids 0, 1
    for _ in range(3):                                      # frames 1..3: only id 0 seen
        result = tracker.step(*_frame([0.9], eye[:1]))
        assert result.track_ids.tolist() == [0]
    # After frame 3, id 1 was last seen at frame 0: 3 - 0 > 2, so it is dead.
    assert result.live_ids.tolist() == [0]
    # The same object comes back: it cannot match a dead tracklet and starts id 2.
    result = tracker.step(*_frame([0.9, 0.8], eye[:2]))
    assert result.track_ids.tolist() == [0, 2]
    assert result.live_ids.tolist() == [0, 2]


def test_noise_tracks_are_dropped_and_restart_as_new_rows():
    config = TrackerConfig(noise_frame_num=2, none_frame_num=2, suppress_frame_num=3)
    tracker = VideoTracker(config)
    eye = torch.eye(4) * 10
    tracker.step(*_frame([0.9, 0.8], eye[:2]))   # frame 0: ids 0 (steady), 1 (short)
    tracker.step(*_frame([0.9], eye[:1]))        # frame 1
    tracker.step(*_frame([0.9], eye[:1]))        # frame 2: not yet > noise_frame_num
    assert tracker.current_tracks().track_ids.tolist() == [0, 1]
    tracker.step(*_frame([0.9], eye[:1]))        # frame 3: id 1 has 3 empty trailing frames, 1 valid -> dropped
    assert tracker.current_tracks().track_ids.tolist() == [0]
    result = tracker.step(*_frame([0.9, 0.8], eye[:2]))  # frame 4: id 1 is still in memory and matches
    assert result.track_ids.tolist() == [0, 1]
    tracks = tracker.current_tracks()
    assert tracks.track_ids.tolist() == [0, 1]
    # The restarted row only holds the frames since it came back.
    present = tracks.pred_masks.flatten(2).ne(0).any(-1)
    assert present[1].tolist() == [False, False, False, False, True]


def test_greedy_frame_weighting_prefers_long_tracklets():
    scores = np.array([[0.45, 0.40, 0.05]], dtype=np.float32)
    exist = np.array([1, 5, 2])
    # Unweighted: column 0. Weighted (two above 0.3): 0.45*1 < 0.40*5 -> column 1.
    assert greedy_match(scores, exist, 0.3, frame_weight=False).tolist() == [0]
    assert greedy_match(scores, exist, 0.3, frame_weight=True).tolist() == [1]
    # With a single score above the threshold no weighting happens.
    scores = np.array([[0.45, 0.20, 0.05]], dtype=np.float32)
    assert greedy_match(scores, np.array([1, 50, 2]), 0.3, frame_weight=True).tolist() == [0]
    # A matched column is taken away from later rows.
    scores = np.array([[0.9, 0.1], [0.8, 0.35]], dtype=np.float32)
    assert greedy_match(scores, np.array([1, 1]), 0.3, frame_weight=True).tolist() == [0, 1]
    scores = np.array([[0.9, 0.1], [0.8, 0.2]], dtype=np.float32)
    assert greedy_match(scores, np.array([1, 1]), 0.3, frame_weight=True).tolist() == [0, -1]


def _greedy_reference(scores, exist, thr, frame_weight):
    """The released greedy loop, row by row on a float32 copy."""
    scores = scores.astype(np.float32, copy=True)
    weights = exist.astype(np.float32)
    thr = np.float32(thr)
    matched = [-1] * scores.shape[0]
    for row in range(scores.shape[0]):
        row_scores = scores[row].copy()
        above = row_scores > thr
        if frame_weight and above.sum() > 1:
            mean = np.float32(weights[above].sum(dtype=np.float32) / np.float32(above.sum()))
            row_scores = np.where(above, row_scores * weights, row_scores * mean).astype(np.float32)
        column = int(np.argmax(row_scores))
        if row_scores[column] > thr:
            matched[row] = column
            saved = scores[row, column]
            scores[:, column] = 0
            scores[row, column] = saved
    return matched


def test_greedy_matches_row_by_row_reference_with_contention():
    rng = np.random.default_rng(0)
    for trial in range(200):
        rows, cols = rng.integers(1, 12), rng.integers(1, 12)
        # Few distinct values: many rows compete for the same columns, ties included.
        scores = (rng.integers(0, 8, (rows, cols)) / 8).astype(np.float32)
        exist = rng.integers(1, 6, cols)
        for thr in (0.3, 0.5, -0.1):
            for frame_weight in (True, False):
                expected = _greedy_reference(scores, exist, thr, frame_weight)
                assert greedy_match(scores, exist, thr, frame_weight).tolist() == expected, (trial, thr)


def test_hungarian_is_optimal_and_keeps_threshold_ties():
    scores = np.array([[0.9, 0.8], [0.85, 0.1]], dtype=np.float32)
    # Greedy takes (0,0) then row 1 has nothing; Hungarian maximises the sum: (0,1), (1,0).
    assert greedy_match(scores, np.array([1, 1]), 0.3, frame_weight=False).tolist() == [0, -1]
    assert hungarian_match(scores, 0.3).tolist() == [1, 0]
    tie = np.array([[np.float32(0.3)]], dtype=np.float32)
    assert hungarian_match(tie, 0.3).tolist() == [0]        # released: dropped only when score < thr
    assert greedy_match(tie, np.array([1]), 0.3, frame_weight=False).tolist() == [-1]  # greedy needs > thr


def _pairwise_nms(masks, thr):
    expected = [True] * masks.shape[0]
    for i in range(masks.shape[0]):
        if not expected[i]:
            continue
        for j in range(i + 1, masks.shape[0]):
            inter = (masks[i] & masks[j]).sum()
            union = (masks[i] | masks[j]).sum()
            if expected[j] and (inter + 1e-6) / (union + 1e-6) > thr:
                expected[j] = False
    return expected


@pytest.mark.parametrize("passes", [MaskPasses(), CpuMaskPasses()], ids=["torch", "cpu_kernel"])
def test_mask_nms_matches_pairwise_definition(passes):
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(12, 16, 16, generator=generator) > 0.5    # dense: many candidate pairs (matmul path)
    masks[5] = masks[2]
    masks[7] = False
    masks[9] = False                                        # two empty masks: IoU 1 -> the later one goes
    keep = mask_nms_keep(masks, 0.6, passes)
    assert keep.tolist() == _pairwise_nms(masks, 0.6)
    assert not keep[5] and not keep[9] and keep[7]
    # Sparse boxes (few candidate pairs: gathered path), IoUs spread around the threshold.
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        masks = torch.zeros(15, 20, 24, dtype=torch.bool)
        for q in range(15):
            y, x = (int(v) for v in torch.randint(0, 14, (2,), generator=generator))
            hh, ww = (int(v) for v in torch.randint(2, 7, (2,), generator=generator))
            masks[q, y:y + hh, x:x + ww] = True
        for thr in (0.3, 0.6):
            assert mask_nms_keep(masks, thr, passes).tolist() == _pairwise_nms(masks, thr), (seed, thr)


@pytest.mark.parametrize("height,width", [(120, 216), (6, 8), (5, 2040), (6, 2048), (7, 13), (4, 504), (8, 512)])
def test_band_pixel_counts_word_sums_equal_plain_counts(height, width):
    rng = np.random.default_rng(width)
    masks = rng.random((3, height, width)) < 0.5
    masks[1] = True                                         # full bands: the largest lane sums
    rows = band_height(height, width)
    assert height % rows == 0 and rows * width < 2048 or rows == 1
    expected = masks.reshape(3, height // rows, rows * width).sum(axis=2)
    assert np.array_equal(_band_pixel_counts(masks), expected)
    assert np.array_equal(_band_pixel_counts(masks[:, :, ::-1]), expected)   # not contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("keep_copy", [True, False])
def test_cpu_kernel_equals_torch_mask_passes(dtype, keep_copy):
    """Each full-mask pass of the CPU kernel gives the torch path's values: candidate masks (with
    logits near zero, where only the real sigmoid decides), band counts and pair intersections,
    and the kernel's reused buffers leave no trace from one clip to the next."""
    generator = torch.Generator().manual_seed(int(keep_copy) + 7)
    torch_passes, cpu_passes = MaskPasses(), CpuMaskPasses()
    for num_frames, height, width in ((3, 24, 40), (2, 24, 40), (2, 10, 13)):   # a smaller clip reuses buffers
        num_queries = 9
        pred_masks = torch.randn(num_frames, num_queries, height, width, generator=generator)
        pred_masks[:, :, :2] = torch.randn(num_frames, num_queries, 2, width, generator=generator) * 1e-5
        pred_masks = pred_masks.to(dtype)
        num_selected = np.array([4, 9, 1][:num_frames])
        offsets = np.concatenate([[0], np.cumsum(num_selected)])
        order = np.stack([torch.randperm(num_queries, generator=generator).numpy() for _ in range(num_frames)])
        flat_rows = np.concatenate([frame * num_queries + order[frame, :count]
                                    for frame, count in enumerate(num_selected)])
        expected, got = (passes.candidate_masks(pred_masks, flat_rows, offsets, keep_copy)
                         for passes in (torch_passes, cpu_passes))
        flat_masks = pred_masks.reshape(-1, height, width)[torch.from_numpy(flat_rows)]
        assert torch.equal(expected.binary, flat_masks.sigmoid() > 0.5)
        assert torch.equal(got.binary, expected.binary)
        assert np.array_equal(got.band_counts, expected.band_counts)
        assert (got.logits is None) == (expected.logits is None) == (not keep_copy)
        if keep_copy:
            assert torch.equal(got.logits, expected.logits) and torch.equal(got.logits, flat_masks)
        assert np.array_equal(cpu_passes.band_counts(expected.binary), torch_passes.band_counts(expected.binary))
        first, second = np.triu_indices(int(offsets[-1]), 1)
        assert np.array_equal(cpu_passes.intersections(expected.binary, first, second),
                              torch_passes.intersections(expected.binary, first, second))


@pytest.mark.parametrize("variant", CONFIG_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_cpu_kernel_and_torch_path_track_alike(variant, monkeypatch):
    """The whole tracker with the CPU kernel and with the torch path (what accelerators run) on CPU:
    the same per-frame results and the same tracks, bit for bit."""
    config = TrackerConfig(**variant)
    logits, masks, embeds = synthetic_detections(20, seed=4)
    outputs = {}
    for enabled in (True, False):
        monkeypatch.setattr(cpu_kernel, "ENABLED", enabled)
        tracker = VideoTracker(config)
        results = tracker.step_clip(logits[:1], masks[:1], embeds[:1])
        assert isinstance(tracker._mask_passes, CpuMaskPasses) == enabled
        results += tracker.step_clip(logits[1:], masks[1:], embeds[1:])
        outputs[enabled] = results, tracker.finalize()
    (results, tracks), (torch_results, torch_tracks) = outputs[True], outputs[False]
    for result, torch_result in zip(results, torch_results):
        for field in ("assigned_ids", "query_indices", "track_ids", "live_ids"):
            assert torch.equal(getattr(result, field), getattr(torch_result, field))
    assert torch.equal(tracks.track_ids, torch_tracks.track_ids)
    assert torch.equal(tracks.pred_logits, torch_tracks.pred_logits)
    assert torch.equal(tracks.pred_masks, torch_tracks.pred_masks)


def test_binarize_equals_sigmoid_threshold_near_zero():
    values = torch.tensor([-1.0, -1e-9, 0.0, 2.0 ** -30, 2.0 ** -25, 2.0 ** -24, 2.0 ** -23, 1e-6, 5e-5, 1e-4,
                           2e-4, 3.0])
    assert torch.equal(binarize_mask_logits(values), values.sigmoid() > 0.5)
    noise = torch.randn(64, 64) * 1e-5
    assert torch.equal(binarize_mask_logits(noise), noise.sigmoid() > 0.5)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="embed_type"):
        TrackerConfig(embed_type="temporally_weighted_softmax")
    with pytest.raises(ValueError, match="match_type"):
        TrackerConfig(match_type="optimal")
    assert dataclasses.is_dataclass(TrackerConfig) and TrackerConfig.__dataclass_params__.frozen
    tracker = VideoTracker(TrackerConfig())
    logits, masks, embeds = _frame([0.9], torch.eye(2)[:1])
    with pytest.raises(ValueError, match=r"frame 0: pred_logits must be \(Q, K\+1\)"):
        tracker.step(logits[:, :1], masks, embeds)  # no class besides no-object
    tracker.step(logits, masks, embeds)  # K = 3 from here on
    with pytest.raises(ValueError, match=r"frame 1: pred_logits must be \(Q, K\+1=4\)"):
        tracker.step(logits[:, :3], masks, embeds)
    with pytest.raises(ValueError, match="frame 1: mask size"):
        tracker.step(logits, masks[:, :4], embeds)
    with pytest.raises(RuntimeError, match="no frame"):
        VideoTracker(TrackerConfig()).current_tracks()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(fixture):
    config = TrackerConfig()
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_tracks, cpu_results = track_video(config, *_inputs(fixture))
    gpu_tracks, gpu_results = track_video(config, *(x.cuda() for x in _inputs(fixture)))
    assert torch.equal(cpu_tracks.track_ids, gpu_tracks.track_ids)
    assert [r.assigned_ids.tolist() for r in cpu_results] == [r.assigned_ids.tolist() for r in gpu_results]
    torch.testing.assert_close(gpu_tracks.pred_logits.cpu(), cpu_tracks.pred_logits, atol=1e-6, rtol=0)
    assert torch.equal(gpu_tracks.pred_masks.cpu(), cpu_tracks.pred_masks)


def _results_equal(a_results, b_results):
    assert [r.frame_index for r in a_results] == [r.frame_index for r in b_results]
    for a, b in zip(a_results, b_results):
        assert torch.equal(a.assigned_ids, b.assigned_ids)
        assert torch.equal(a.query_indices, b.query_indices) and torch.equal(a.track_ids, b.track_ids)
        assert torch.equal(a.live_ids, b.live_ids)


@pytest.mark.parametrize("variant", [{}, {"embed_type": "temporally_weighted"}, {"match_type": "hungarian"}],
                         ids=["default", "temporally_weighted", "hungarian"])
def test_step_clip_equals_single_steps_whatever_the_split(variant):
    """step_clip over clips of any length, with or without copies of the masks, gives what one
    step() per frame gives, bit for bit (the detection stage is batched over the clip)."""
    config = TrackerConfig(**variant)
    logits, masks, embeds = synthetic_detections(23, seed=4)
    single = VideoTracker(config)
    single_results = [single.step(logits[t], masks[t], embeds[t]) for t in range(23)]
    single_tracks = single.finalize()
    for clip_length, copy_masks in ((2, True), (5, True), (7, False), (23, False)):
        tracker = VideoTracker(config, copy_masks=copy_masks)
        results = []
        for start in range(0, 23, clip_length):
            results.extend(tracker.step_clip(logits[start:start + clip_length], masks[start:start + clip_length],
                                             embeds[start:start + clip_length]))
        _results_equal(results, single_results)
        tracks = tracker.finalize()
        assert torch.equal(tracks.track_ids, single_tracks.track_ids)
        assert torch.equal(tracks.pred_logits, single_tracks.pred_logits)
        assert torch.equal(tracks.pred_masks, single_tracks.pred_masks)
    for frames_per_step in (1, 4, 30):
        tracks, results = track_video(config, logits, masks, embeds, frames_per_step=frames_per_step)
        _results_equal(results, single_results)
        assert torch.equal(tracks.pred_masks, single_tracks.pred_masks)


def test_copied_masks_survive_the_caller_reusing_its_buffer():
    """By default the tracker copies what it keeps: the caller may overwrite its frame tensors.
    With copy_masks=False it keeps references (what track_video does with a whole-video tensor)."""
    config = TrackerConfig()
    logits, masks, embeds = synthetic_detections(6, seed=2)
    expected, _ = track_video(config, logits, masks, embeds)
    tracker = VideoTracker(config)
    buffer = torch.empty_like(masks[:2])
    for start in range(0, 6, 2):
        buffer.copy_(masks[start:start + 2])
        tracker.step_clip(logits[start:start + 2], buffer, embeds[start:start + 2])
    buffer.fill_(-7.0)
    assert torch.equal(tracker.finalize().pred_masks, expected.pred_masks)
    with pytest.raises(ValueError, match="copy_masks=False"):
        VideoTracker(config, mask_storage_device="meta", copy_masks=False).step(logits[0], masks[0], embeds[0])


def test_few_tracked_candidates_are_compacted():
    """When under half of a clip's candidates get a track, only the tracked masks are kept."""
    config = TrackerConfig(init_score_thr=0.6)
    logits, masks, embeds = synthetic_detections(12, num_distractors=20, seed=6)
    tracker = VideoTracker(config)
    results = tracker.step_clip(logits, masks, embeds)
    kept_rows = sum(frame_masks.shape[0] for frame_masks in tracker._frame_masks)
    tracked = sum(r.track_ids.numel() for r in results)
    selected = sum(int((r.assigned_ids >= REMOVED_BY_NMS).sum()) for r in results)
    assert 2 * tracked < selected and kept_rows == tracked
    assigned, live, track_ids, out_logits, out_masks = oracle_track(config, logits, masks, embeds)
    np.testing.assert_array_equal(np.stack([r.assigned_ids.numpy() for r in results]), np.array(assigned))
    tracks = tracker.finalize()
    assert torch.equal(tracks.track_ids, track_ids) and torch.equal(tracks.pred_masks, out_masks)


@pytest.mark.parametrize("variant", CONFIG_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_accelerator_code_path_matches_loop_oracle_on_cpu(variant, monkeypatch):
    """The torch-only code path (what runs on CUDA) with the numpy shortcuts switched off, on CPU:
    the same decisions as the loop oracle, streaming in clips and with copies."""
    monkeypatch.setattr(cpu_kernel, "ENABLED", False)
    config = TrackerConfig(**variant)
    logits, masks, embeds = synthetic_detections(24, seed=0)
    tracker = VideoTracker(config)
    results = tracker.step_clip(logits[:10], masks[:10], embeds[:10]) + tracker.step_clip(
        logits[10:], masks[10:], embeds[10:])
    assigned, live, track_ids, out_logits, out_masks = oracle_track(config, logits, masks, embeds)
    np.testing.assert_array_equal(np.stack([r.assigned_ids.numpy() for r in results]), np.array(assigned))
    assert [r.live_ids.tolist() for r in results] == live
    tracks = tracker.finalize()
    assert torch.equal(tracks.track_ids, track_ids)
    assert torch.equal(tracks.pred_logits, out_logits) and torch.equal(tracks.pred_masks, out_masks)
