"""The assembled CTVIS model on CPU: configs, the training forward (losses, gradients,
determinism, AMP), chunked video inference, checkpoint loading."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import presets
from models.checkpoint import load_official_weights
from models.clip_batch import ClipBatch, collate_clips
from models.model import CTVISConfig, CTVISModel, InferenceConfig, build_model
from models.tracking import track_video
from models.video_inference import inference_video


def synthetic_batch(seed: int = 0, frames: int = 3) -> ClipBatch:
    """Two clips of ``frames`` frames, padded to 64x96: clip 0 fills it with 3 instances, clip 1
    is 50x80 (bottom/right padding) with 2 instances (one padding instance column). Instances
    are boxes that move; some are absent in some frames."""
    rng = np.random.default_rng(seed)
    clips = []
    # (height, width, classes, presence per frame [T, N])
    presence0 = np.ones((frames, 3), dtype=bool)
    presence0[1, 1] = False  # instance 1 leaves for a frame
    presence0[0, 2] = False  # instance 2 appears at frame 1
    presence1 = np.ones((frames, 2), dtype=bool)
    presence1[frames - 1, 0] = False  # instance 0 is gone in the last frame
    for index, (height, width, classes, presence) in enumerate(
        [(64, 96, [0, 2, 1], presence0), (50, 80, [1, 1], presence1)]
    ):
        count = len(classes)
        images = rng.integers(0, 256, (frames, 3, height, width), dtype=np.uint8)
        masks = np.zeros((frames, count, height, width), dtype=bool)
        ids = np.full((frames, count), -1, dtype=np.int64)
        for n in range(count):
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            size_h, size_w = rng.integers(8, height // 2), rng.integers(8, width // 2)
            for t in range(frames):
                if presence[t, n]:
                    masks[t, n, top + 2 * t : top + 2 * t + size_h, left + 3 * t : left + 3 * t + size_w] = True
                    ids[t, n] = n
                    # an object brightens its pixels a little, so there is something to learn
                    images[t, :, masks[t, n]] = np.minimum(images[t, :, masks[t, n]] // 2 + 40 * (classes[n] + 1), 255)
        clips.append({
            "frames": images, "masks": masks, "gt_ids": ids, "gt_classes": np.array(classes),
            "video_id": index + 1, "frame_indices": np.arange(frames), "dataset_index": 0,
        })
    batch = ClipBatch.from_numpy(collate_clips(clips, size_divisibility=32))
    return batch.validate(num_classes=3)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(presets.tiny())


# ----------------------------------------------------------------------------------- configs
def test_presets_are_consistent_models():
    expected = {
        "ctvis_r50_ytvis19": (40, 100, 99, "resnet50"),
        "ctvis_r50_ytvis21": (40, 100, 99, "resnet50"),
        "ctvis_r50_ovis": (25, 100, 99, "resnet50"),
        "ctvis_swinl_ytvis19": (40, 200, 199, "swin_large"),
        "ctvis_swinl_ytvis21": (40, 200, 199, "swin_large"),
        "ctvis_swinl_ovis": (25, 200, 199, "swin_large"),
        "tiny": (3, 16, 15, "tiny"),
    }
    assert set(presets.PRESETS) == set(expected) == set(presets.NETWORK_PRESETS)
    for name, (classes, queries, negatives, kind) in expected.items():
        config = presets.preset(name)
        assert isinstance(config, CTVISConfig)
        assert config.network == presets.network_preset(name)
        assert config.network.num_classes == classes
        assert config.network.transformer_decoder.num_queries == queries
        assert config.num_negatives == negatives and config.network.backbone.kind == kind
        assert config.tracker.match_score_thr == 0.3 and config.tracker.embed_type == "similarity_guided"
        if name != "tiny":
            # the released num_topk is the number of classes; the released loss settings
            assert config.inference.num_topk is None and config.num_topk == classes
            assert config.criterion.num_points == 12544
            assert (config.ctcl.reid_weight, config.ctcl.aux_reid_weight) == (2.0, 3.0)
    assert presets.tiny().criterion.num_points <= 1024
    with pytest.raises(KeyError, match="unknown model preset"):
        presets.preset("ctvis_r101")


def test_config_consistency_errors_name_the_field():
    config = presets.tiny()
    with pytest.raises(ValueError, match=r"ctcl\.num_negatives=16 must be in 1\.\.15"):
        dataclasses.replace(config, ctcl=dataclasses.replace(config.ctcl, num_negatives=16))
    with pytest.raises(ValueError, match=r"InferenceConfig\.num_clip_frames"):
        InferenceConfig(num_clip_frames=0)


# ---------------------------------------------------------------------------------- training
def test_training_step_losses_and_gradients(tiny_model):
    model = tiny_model.train()
    model.zero_grad(set_to_none=True)
    batch = synthetic_batch()
    losses = model(batch, seed=1)
    num_aux = model.config.network.transformer_decoder.num_layers
    expected = {"loss_ce", "loss_mask", "loss_dice", "loss_reid", "loss_aux_reid"}
    expected |= {f"{name}_{i}" for name in ("loss_ce", "loss_mask", "loss_dice") for i in range(num_aux)}
    assert set(losses) == expected
    bad = {name: value.item() for name, value in losses.items() if not torch.isfinite(value)}
    assert not bad, f"non-finite losses: {bad}"
    assert all(value.dim() == 0 for value in losses.values())
    assert losses["loss_reid"] > 0 and losses["loss_mask"] > 0
    sum(losses.values()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    non_finite = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not non_finite, f"parameters with non-finite gradients: {non_finite}"
    reid_grad = sum(p.grad.abs().sum() for p in model.network.decoder.reid_head.parameters())
    assert reid_grad > 0


def test_same_seed_same_losses_and_num_masks_override(tiny_model):
    model = tiny_model.train()
    batch = synthetic_batch(seed=3)
    with torch.no_grad():
        first = model(batch, seed=7)
        second = model(batch, generator=torch.Generator().manual_seed(7))
        other = model(batch, seed=8)
        halved = model(batch, seed=7, num_masks=2 * int((batch.gt_ids != -1).sum()))
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[n], other[n]) for n in ("loss_mask", "loss_reid"))
    torch.testing.assert_close(halved["loss_mask"], first["loss_mask"] / 2)
    torch.testing.assert_close(halved["loss_ce"], first["loss_ce"])
    with pytest.raises(ValueError, match="generator or a seed"):
        model(batch, generator=torch.Generator(), seed=1)


def test_targets_follow_presence_and_padding(tiny_model):
    batch = synthetic_batch()
    targets = tiny_model._frame_targets(batch)
    assert [int(t["labels"].numel()) for t in targets] == [2, 2, 3, 2, 2, 1]
    assert targets[1]["labels"].tolist() == [0, 1]  # frame 1 of clip 0: instance 1 absent
    assert targets[0]["masks"].shape[-2:] == (64, 96)  # criterion targets at the padded size
    images = tiny_model.preprocess_batch(batch)
    assert images.shape == (6, 3, 64, 96)
    assert images[3:, :, 50:].abs().max() == 0 and images[3:, :, :, 80:].abs().max() == 0
    mean = torch.tensor([123.675, 116.280, 103.530]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.120, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(images[3, :, :50, :80], (batch.images[1, 0, :, :50, :80] - mean) / std, rtol=0, atol=0)


def test_ctcl_matching_covers_every_instance_with_unpadded_masks(tiny_model):
    batch = synthetic_batch()
    with torch.no_grad():
        outputs = tiny_model.network(tiny_model.preprocess_batch(batch))
    gt_to_query, valid = tiny_model._ctcl_matching(outputs.final.logits, outputs.final.masks, batch, torch.Generator().manual_seed(0))
    assert gt_to_query.shape == valid.shape == (2, 3, 3)
    assert torch.equal(valid, batch.gt_ids != -1)
    for b, count in ((0, 3), (1, 2)):
        for t in range(3):  # absent instances get a query too, all distinct
            assert len(set(gt_to_query[b, t, :count].tolist())) == count
    # Clip 1 is matched against its unpadded 50x80 masks (the released CTCLPlugin passes the raw
    # Instances): the same as calling the matcher on those masks directly.
    from models.matcher import FrameTarget

    targets = [FrameTarget(labels=batch.gt_classes[1, :2], masks=batch.gt_masks[1, t, :2, :50, :80]) for t in range(3)]
    generator = torch.Generator().manual_seed(0)
    tiny_model.criterion.matcher(outputs.final.logits[:3], outputs.final.masks[:3], [
        FrameTarget(labels=batch.gt_classes[0], masks=batch.gt_masks[0, t]) for t in range(3)], generator)
    direct = tiny_model.criterion.matcher(outputs.final.logits[3:], outputs.final.masks[3:], targets, generator)
    for t, (rows, cols) in enumerate(direct):
        assert torch.equal(gt_to_query[1, t, :2], rows[torch.argsort(cols)])


def test_training_step_runs_under_bfloat16_autocast(tiny_model):
    model = tiny_model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = model(synthetic_batch(seed=5), seed=0)
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------------- inference
def test_chunked_infer_video_equals_tracking_all_frames_at_once(tiny_model):
    model = tiny_model
    config = dataclasses.replace(model.config, inference=InferenceConfig(num_clip_frames=5, num_topk=10))
    chunked = CTVISModel(config)
    chunked.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(11)
    frames = torch.randint(0, 256, (12, 3, 60, 90), dtype=torch.uint8, generator=generator)
    chunked.train()
    instances = chunked.infer_video(frames, output_size=(45, 70))
    assert chunked.training  # mode restored
    assert len(instances) == 10 and instances.masks.shape == (10, 12, 45, 70)

    chunked.eval()
    with torch.no_grad():
        images, _ = chunked.network.preprocess(frames)
        outputs = chunked.network(images)
    tracks, _ = track_video(config.tracker, outputs.final.logits, outputs.final.masks, outputs.final.embeds)
    expected = inference_video(tracks.pred_logits, tracks.pred_masks, tuple(images.shape[-2:]), (60, 90), (45, 70), 10)
    assert torch.equal(instances.labels, expected.labels)
    assert torch.equal(instances.masks, expected.masks)
    torch.testing.assert_close(instances.scores, expected.scores, rtol=0, atol=1e-6)


def test_infer_video_rejects_bad_frames(tiny_model):
    with pytest.raises(ValueError, match="uint8"):
        tiny_model.infer_video(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        tiny_model.infer_video(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_official_weights_load_into_the_model(tiny_model):
    """Official names map onto ``CTVISModel.network`` whether given the model or its network."""
    state = {
        "sem_seg_head.predictor.class_embed.weight": torch.ones(4, 32),
        "sem_seg_head.predictor.class_embed.bias": torch.zeros(4),
        "criterion.empty_weight": torch.ones(4),
    }
    model = build_model(presets.tiny())
    report = model.load_official_checkpoint(state)
    assert report.loaded == ["decoder.class_head.bias", "decoder.class_head.weight"]
    assert report.ignored == ["criterion.empty_weight"] and not report.unexpected
    assert torch.equal(model.network.decoder.class_head.weight, torch.ones(4, 32))
    same = load_official_weights(build_model(presets.tiny()), state)
    assert same.loaded == report.loaded and same.missing == report.missing
    assert not any(name.startswith("network.") for name in report.missing)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_and_inference(tiny_model):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = CTVISModel(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model = model.cuda().train()
    losses = model(synthetic_batch(), seed=0)  # the batch stays on the CPU: forward moves it
    assert all(value.device.type == "cuda" and torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    frames = torch.randint(0, 256, (7, 3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    instances = model.infer_video(frames)
    assert instances.masks.shape == (len(instances), 7, 60, 90) and torch.isfinite(instances.scores).all()
