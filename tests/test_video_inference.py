"""Video post-processing: parity with the released inference_video fixture and with the loop oracle
on every path (windowed power-of-two, general resize), plus clip-chunked whole-video inference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.tracking import TrackerConfig, track_video
from models.video_inference import VideoInstances, inference_tracks, inference_video
from tests.tracker_oracle import oracle_inference_video, synthetic_detections


@pytest.fixture(scope="module")
def fixture(reference_dir):
    data = np.load(reference_dir / "model" / "tracker_r50_ytvis19.npz")
    return {key: data[key] for key in data.files}


@pytest.mark.parity
def test_matches_released_inference_video(fixture):
    shape = tuple(int(v) for v in fixture["video_pred_masks_shape"])
    expected_masks = np.unpackbits(fixture["video_pred_masks_packed"], axis=-1, count=shape[-1]).astype(bool)
    expected_masks = expected_masks.reshape(shape)
    result = inference_video(torch.from_numpy(fixture["out_pred_logits"]), torch.from_numpy(fixture["out_pred_masks"]),
                             padded_size=tuple(fixture["video_image_tensor_size"][-2:]),
                             image_size=tuple(fixture["video_image_size"]),
                             output_size=tuple(fixture["video_out_size"]), num_topk=40)
    np.testing.assert_array_equal(result.labels.numpy(), fixture["video_pred_labels"])
    np.testing.assert_allclose(result.scores.numpy(), fixture["video_pred_scores"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(result.masks.numpy(), expected_masks)
    # Entries of one track share one upsampled mask.
    assert result.track_masks.shape[0] == len(np.unique(fixture["video_topk_track_index"]))


@pytest.mark.parity
def test_tracker_then_post_processing_end_to_end(fixture):
    tracks, _ = track_video(TrackerConfig(), torch.from_numpy(fixture["in_pred_logits"]),
                            torch.from_numpy(fixture["in_pred_masks"]), torch.from_numpy(fixture["in_pred_embeds"]))
    result = inference_video(tracks.pred_logits, tracks.pred_masks, (128, 128), (120, 124), (96, 112), num_topk=40)
    np.testing.assert_array_equal(result.labels.numpy(), fixture["video_pred_labels"])
    np.testing.assert_allclose(result.scores.numpy(), fixture["video_pred_scores"], atol=1e-6, rtol=0)


# (padded, image, output): identity second resize with and without padding, 2x output, non-integer
# output, downscale.
SIZE_CASES = [
    ((96, 160), (96, 160), (96, 160)),
    ((96, 160), (90, 150), (90, 150)),
    ((96, 160), (90, 150), (180, 300)),
    ((96, 160), (90, 150), (77, 131)),
    ((96, 160), (96, 160), (40, 64)),
]


@pytest.mark.parametrize("padded,image,output", SIZE_CASES)
def test_matches_loop_oracle_on_every_path(padded, image, output):
    logits, masks, embeds = synthetic_detections(12, mask_size=(24, 40), seed=4)
    tracks, _ = track_video(TrackerConfig(), logits, masks, embeds)
    result = inference_video(tracks.pred_logits, tracks.pred_masks, padded, image, output, num_topk=40)
    scores, labels, expected_masks = oracle_inference_video(tracks.pred_logits, tracks.pred_masks, padded, image,
                                                            output, num_topk=40)
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.masks, expected_masks)
    torch.testing.assert_close(result.scores, scores, atol=1e-6, rtol=0)
    assert result.masks.shape == (40, 12, *output) and result.image_size == output


@pytest.mark.parametrize("padded,image,output", [SIZE_CASES[1], SIZE_CASES[3]])
def test_compact_tracks_path_equals_dense_and_oracle(padded, image, output):
    logits, masks, embeds = synthetic_detections(12, mask_size=(24, 40), seed=6)
    tracks, _ = track_video(TrackerConfig(), logits, masks, embeds)
    compact = inference_tracks(tracks, padded, image, output, num_topk=40, planes_per_chunk=3)
    assert compact.windows is not None and compact._track_masks is None       # nothing dense built yet
    scores, labels, expected_masks = oracle_inference_video(tracks.pred_logits, tracks.pred_masks, padded, image,
                                                            output, num_topk=40)
    torch.testing.assert_close(compact.scores, scores, atol=1e-6, rtol=0)
    assert torch.equal(compact.labels, labels)
    for entry, frame in ((0, 0), (5, 7), (39, 11)):
        assert torch.equal(compact.frame_mask(entry, frame), expected_masks[entry, frame])
    assert torch.equal(compact.masks, expected_masks)
    dense = inference_video(tracks.pred_logits, tracks.pred_masks, padded, image, output, num_topk=40)
    assert torch.equal(dense.track_masks, compact.track_masks) and torch.equal(dense.scores, compact.scores)
    assert torch.equal(dense.frame_mask(3, 4), expected_masks[3, 4])


def test_mask_only_in_the_padding_is_empty():
    """A track whose positive logits all lie in the padding crops to an empty mask (confidence 0);
    one that touches the image border keeps the pixels the resizes carry inside."""
    pred_masks = torch.full((2, 3, 16, 16), -4.0)
    pred_masks[0, :, 14:, 14:] = 6.0            # padding only (image is the top-left 52x52 of 64x64)
    pred_masks[1, 1, 12:14, 12:14] = 6.0        # straddles the image border
    pred_logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    for output in ((52, 52), (80, 70)):
        result = inference_video(pred_logits, pred_masks, (64, 64), (52, 52), output, num_topk=4)
        scores, labels, masks = oracle_inference_video(pred_logits, pred_masks, (64, 64), (52, 52), output, num_topk=4)
        assert torch.equal(result.labels, labels) and torch.equal(result.masks, masks)
        torch.testing.assert_close(result.scores, scores, atol=1e-6, rtol=0)
        assert not result.track_masks[0].any() and result.track_masks[1].any()     # unique tracks 0, 1


def test_interpolation_is_batch_invariant():
    """Regrouping planes (the released 5x5 chunks vs our plane chunks) must not change any bit."""
    generator = torch.Generator().manual_seed(0)
    planes = torch.randn(7, 1, 30, 44, generator=generator) * 5
    for size in ((120, 176), (77, 131)):
        batched = torch.nn.functional.interpolate(planes, size=size, mode="bilinear", align_corners=False)
        single = torch.cat([torch.nn.functional.interpolate(p[None], size=size, mode="bilinear", align_corners=False)
                            for p in planes])
        grouped = torch.nn.functional.interpolate(planes[:6].reshape(2, 3, 30, 44), size=size, mode="bilinear",
                                                  align_corners=False).reshape(6, 1, *size)
        assert torch.equal(batched, single) and torch.equal(batched[:6], grouped)


def test_empty_and_small_inputs():
    empty = inference_video(torch.zeros(0, 5), torch.zeros(0, 3, 8, 8), (32, 32), (32, 32), (32, 32), num_topk=4)
    assert isinstance(empty, VideoInstances) and len(empty) == 0 and empty.masks.shape == (0, 3, 32, 32)
    # Fewer track x class pairs than num_topk: every pair is returned.
    small = inference_video(torch.randn(1, 3), torch.randn(1, 2, 8, 8), (32, 32), (32, 32), (32, 32), num_topk=10)
    assert len(small) == 2 and sorted(small.labels.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="exceeds padded_size"):
        inference_video(torch.randn(1, 3), torch.randn(1, 2, 8, 8), (32, 32), (40, 32), (32, 32), num_topk=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, masks, embeds = synthetic_detections(12, mask_size=(24, 40), seed=4)
    tracks, _ = track_video(TrackerConfig(), logits, masks, embeds)
    for padded, image, output in SIZE_CASES:
        cpu = inference_video(tracks.pred_logits, tracks.pred_masks, padded, image, output, num_topk=40)
        gpu = inference_video(tracks.pred_logits.cuda(), tracks.pred_masks.cuda(), padded, image, output, num_topk=40)
        assert torch.equal(gpu.labels.cpu(), cpu.labels)
        torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-6, rtol=0)
        mismatched = (gpu.masks.cpu() != cpu.masks).sum().item()
        assert mismatched <= 10, mismatched  # kernels differ: only pixels with a logit ~0 may flip
