"""Bounded-memory online inference (`OnlineVideoInference`, `VideoTracker.take_settled_frames`): the
same video instances as the whole-video path (`track_and_postprocess`) for every tracker option and
clip size, while the tracker holds only a bounded number of frames' masks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import presets
from models.frame_outputs import FrameOutputs
from models.model import build_model
from models.tracking import TrackerConfig, VideoTracker
from models.video_inference import OnlineVideoInference, track_and_postprocess
from tests.tracker_oracle import synthetic_detections


def _clips(logits, masks, embeds, size):
    for start in range(0, logits.shape[0], size):
        part = slice(start, start + size)
        yield FrameOutputs(logits=logits[part], masks=masks[part], queries=embeds[part], embeds=embeds[part])


def _run_online(config, logits, masks, embeds, clip, padded, image, output, num_topk):
    online = OnlineVideoInference(config, padded, image, output, num_topk, planes_per_chunk=3)
    frames = []
    for outputs in _clips(logits, masks, embeds, clip):
        frames += online.step_clip(outputs)
    rest, result = online.finish()
    return frames + rest, result


def _assert_same_instances(frames, result, expected, num_frames):
    assert [frame.frame_index for frame in frames] == list(range(num_frames))  # each frame once, in order
    assert torch.equal(torch.from_numpy(result.labels), expected.labels)
    torch.testing.assert_close(torch.from_numpy(result.scores), expected.scores, rtol=1e-6, atol=0)
    masks = expected.masks
    for frame in frames:
        dense = frame.dense_masks()
        for index, entry in enumerate(result.entries.tolist()):
            rows = np.flatnonzero(frame.entries == entry)
            got = dense[rows[0]] if rows.size else torch.zeros_like(masks[index, frame.frame_index])
            assert torch.equal(got, masks[index, frame.frame_index]), (index, frame.frame_index)


CONFIGS = {
    "released": TrackerConfig(),
    "hungarian_max": TrackerConfig(match_type="hungarian", temporal_score_type="max", embed_type="momentum"),
    "strict_noise": TrackerConfig(suppress_frame_num=5, none_frame_num=1, noise_frame_num=2, init_score_thr=0.2),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("clip", [1, 4, 7])
def test_online_equals_whole_video(name, clip):
    config = CONFIGS[name]
    logits, masks, embeds = synthetic_detections(30, num_queries=24, num_classes=6, mask_size=(24, 40),
                                                 num_distractors=6, seed=3 + clip)
    padded, image, output = (96, 160), (90, 150), (71, 113)
    frames, result = _run_online(config, logits, masks, embeds, clip, padded, image, output, num_topk=12)
    expected, _ = track_and_postprocess(_clips(logits, masks, embeds, 5), padded, config, image, output, num_topk=12)
    assert len(expected) == result.labels.size > 0
    _assert_same_instances(frames, result, expected, 30)


def test_tracker_holds_a_bounded_number_of_frames():
    """A 240-frame video with tracks that come and go: the tracker never holds more than
    noise_frame_num + suppress_frame_num * none_frame_num + a clip of frames' masks, and the
    settled frames' masks are released."""
    config = TrackerConfig()
    logits, masks, embeds = synthetic_detections(240, num_queries=24, num_classes=6, mask_size=(12, 20),
                                                 num_objects=8, num_distractors=8, seed=5)
    tracker = VideoTracker(config)
    bound = config.noise_frame_num + config.suppress_frame_num * config.none_frame_num + 4
    held_max = handed = 0
    for outputs in _clips(logits, masks, embeds, 4):
        tracker.step_clip(outputs.logits, outputs.masks, outputs.embeds)
        handed += len(tracker.take_settled_frames())
        held = sum(m is not None for m in tracker._frame_masks)
        assert held == tracker.num_frames - handed
        held_max = max(held_max, held)
    assert 0 < held_max <= bound
    tracker.end_of_video()
    assert handed + len(tracker.take_settled_frames()) == 240
    assert all(m is None for m in tracker._frame_masks)
    with pytest.raises(RuntimeError, match="handed out"):
        tracker.current_tracks()


def test_model_online_inference_equals_infer_video():
    config = presets.tiny()
    config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, num_topk=6))
    model = build_model(config).eval()
    generator = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (13, 3, 60, 90), dtype=torch.uint8, generator=generator)
    expected = model.infer_video(frames, output_size=(45, 70))
    online = model.online_inference((60, 90), (45, 70))
    settled = []
    chunk = config.inference.num_clip_frames
    for start in range(0, 13, chunk):
        settled += online.step_clip(model.network_outputs(frames[start:start + chunk]))
    rest, result = online.finish()
    assert len(expected) == result.labels.size > 0
    _assert_same_instances(settled + rest, result, expected, 13)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_online_inference_on_cuda_equals_the_whole_video_path():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    logits, masks, embeds = (t.cuda() for t in synthetic_detections(20, num_queries=24, num_classes=6,
                                                                      mask_size=(24, 40), seed=9))
    padded, image, output = (96, 160), (90, 150), (71, 113)
    frames, result = _run_online(TrackerConfig(), logits, masks, embeds, 4, padded, image, output, num_topk=12)
    expected, _ = track_and_postprocess(_clips(logits, masks, embeds, 5), padded, TrackerConfig(), image, output,
                                        num_topk=12, mask_storage_device="cpu")
    expected.scores, expected.labels = expected.scores.cpu(), expected.labels.cpu()
    _assert_same_instances(frames, result, expected, 20)
