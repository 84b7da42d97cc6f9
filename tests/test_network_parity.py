"""Forward parity with the original CTVIS (fixtures in ../shared/reference/model), float32 on the CPU (or on
CUDA with TF32 off: CTVIS_PARITY_DEVICE=cuda, as `make gpu-check` runs it).

The official state dicts are regenerated with the README's deterministic generator, converted
with models.checkpoint and loaded into our models (the composite presets); the network outputs
must match the ones the original code produced from the same weights and frames, and so must
the whole-video inference (``CTVISModel.infer_video`` = the released ``inference_model``:
tracker + ``inference_video``). Each big model is built and loaded once per module.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.ctvis import build_network
from models.model import build_model
from models.presets import ctvis_r50_ytvis19, ctvis_swinl_ytvis19, tiny_network
from tests.mask_boxes import normalized_mask_boxes
from tests.weightgen import generate_official_state_dict, load_manifest

pytestmark = pytest.mark.parity

LOGIT_TOL = dict(atol=2e-5, rtol=1e-4)  # logits, embeddings, queries
FEATURE_TOL = dict(atol=1e-4, rtol=1e-4)  # features and mask logits


# CTVIS_PARITY_DEVICE=cuda runs the same comparisons on a GPU (TF32 off), as `make gpu-check` does.
DEVICE = torch.device(os.environ.get("CTVIS_PARITY_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("CTVIS_PARITY_DEVICE=cuda but no CUDA device", allow_module_level=True)


def _run(reference_dir, model, preset, clip):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    folder = reference_dir / "model"
    ctvis = build_model(preset()).eval()
    official = generate_official_state_dict(load_manifest(folder / f"manifest_{model}_ytvis19.json"))
    report = ctvis.load_official_checkpoint(official)
    del official
    ctvis = ctvis.to(DEVICE)
    network = ctvis.network
    frames = torch.from_numpy(np.load(folder / "input_frames.npz")[clip]).to(DEVICE)
    with torch.no_grad():
        images, sizes = network.preprocess(frames)
        outputs = network(images, return_intermediates=True)
    video = ctvis.infer_video(frames)  # output size = the unpadded input size, as the fixture
    return {"report": report, "images": images, "sizes": sizes, "outputs": outputs, "video": video}


def _flat(outputs):
    final = outputs.final  # named as the fixtures (the released Mask2Former's output keys)
    flat = {"pred_logits": final.logits, "pred_masks": final.masks, "pred_embeds": final.embeds,
            "pred_queries": final.queries}
    flat["pred_bboxes"] = normalized_mask_boxes(final.masks)  # the released model's boxes, from our masks
    flat["mask_features"] = outputs.mask_features
    for level, feature in enumerate(outputs.multi_scale_features):
        flat[f"multi_scale_features_{level}"] = feature
    for name, feature in outputs.backbone_features.items():
        flat[f"backbone_{name}"] = feature
    flat["aux_pred_logits"] = torch.stack([aux.logits for aux in outputs.aux])
    flat["aux_pred_embeds"] = torch.stack([aux.embeds for aux in outputs.aux])
    for layer, logits in enumerate(outputs.attn_mask_logits):
        flat[f"attn_mask_logits_layer{layer}"] = logits
    return {name: value.detach().cpu().numpy() for name, value in flat.items()}


@pytest.fixture(scope="module")
def r50_clip_a(reference_dir):
    run = _run(reference_dir, "r50", ctvis_r50_ytvis19, "clip_a_128x160")
    run["ours"] = _flat(run["outputs"])
    run["ref"] = dict(np.load(reference_dir / "model" / "fwd_r50_clip_a_128x160.npz"))
    return run


@pytest.fixture(scope="module")
def swinl_clip_c(reference_dir):
    run = _run(reference_dir, "swinl", ctvis_swinl_ytvis19, "clip_c_128x160")
    run["ours"] = _flat(run["outputs"])
    run["ref"] = dict(np.load(reference_dir / "model" / "fwd_swinl_clip_c_128x160.npz"))
    return run


def _close(ours, ref, name, tol):
    assert ours[name].shape == ref[name].shape, name
    np.testing.assert_allclose(ours[name], ref[name], err_msg=name, **tol)


@pytest.mark.parametrize("run_name", ["r50_clip_a", "swinl_clip_c"])
def test_official_weights_load_completely(request, run_name):
    report = request.getfixturevalue(run_name)["report"]
    assert report.complete, report.summary()
    assert report.ignored == ["criterion.empty_weight"]


def test_r50_preprocess_matches(r50_clip_a):
    assert r50_clip_a["sizes"] == [(128, 160), (128, 160)]
    np.testing.assert_array_equal(r50_clip_a["images"].cpu().numpy(), r50_clip_a["ref"]["images_normalized_padded"])


@pytest.mark.parametrize("name", ["pred_logits", "pred_embeds", "pred_queries", "aux_pred_logits", "aux_pred_embeds"])
def test_r50_logits_and_embeddings(r50_clip_a, name):
    _close(r50_clip_a["ours"], r50_clip_a["ref"], name, LOGIT_TOL)


@pytest.mark.parametrize(
    "name",
    ["pred_masks", "mask_features", "multi_scale_features_0", "multi_scale_features_1", "multi_scale_features_2",
     "backbone_res2", "backbone_res3", "backbone_res4", "backbone_res5"]
    + [f"attn_mask_logits_layer{i}" for i in range(9)],
)
def test_r50_features_and_masks(r50_clip_a, name):
    _close(r50_clip_a["ours"], r50_clip_a["ref"], name, FEATURE_TOL)


def test_r50_attention_masks_and_boxes_agree(r50_clip_a):
    ours, ref = r50_clip_a["ours"], r50_clip_a["ref"]
    for layer in range(9):
        name = f"attn_mask_logits_layer{layer}"
        # every layer's blocked/allowed decision is the same (the fixture's margins are >= 9.7e-5)
        np.testing.assert_array_equal(ours[name] < 0, ref[name] < 0, err_msg=name)
    np.testing.assert_array_equal(ours["pred_bboxes"], ref["pred_bboxes"])


@pytest.mark.parametrize("name", ["pred_logits", "pred_embeds", "pred_queries"])
def test_swinl_logits_and_embeddings(swinl_clip_c, name):
    _close(swinl_clip_c["ours"], swinl_clip_c["ref"], name, LOGIT_TOL)


@pytest.mark.parametrize(
    "name", ["pred_masks", "multi_scale_features_0", "multi_scale_features_1", "multi_scale_features_2"]
)
def test_swinl_features_and_masks(swinl_clip_c, name):
    _close(swinl_clip_c["ours"], swinl_clip_c["ref"], name, FEATURE_TOL)


def test_swinl_boxes(swinl_clip_c):
    np.testing.assert_array_equal(swinl_clip_c["ours"]["pred_bboxes"], swinl_clip_c["ref"]["pred_bboxes"])


def test_padded_clip_b_preprocess(reference_dir):
    """clip_b (100x140) is normalised first and then zero-padded to 128x160 (bottom/right)."""
    frames = torch.from_numpy(np.load(reference_dir / "model" / "input_frames.npz")["clip_b_100x140"])
    network = build_network(tiny_network())  # preprocessing only depends on the shared pixel mean/std
    images, sizes = network.preprocess(frames)
    assert images.shape == (2, 3, 128, 160) and sizes == [(100, 140)] * 2
    mean = torch.tensor([123.675, 116.280, 103.530]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.120, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(images[:, :, :100, :140], (frames - mean) / std, rtol=0, atol=0)
    assert images[:, :, 100:].abs().max() == 0 and images[:, :, :, 140:].abs().max() == 0
    # a list of differently sized frames pads each to the common padded size
    listed, listed_sizes = network.preprocess([frames[0], frames[1][:, :90, :130]])
    assert listed.shape == (2, 3, 128, 160) and listed_sizes == [(100, 140), (90, 130)]
    torch.testing.assert_close(listed[0], images[0], rtol=0, atol=0)
    assert listed[1, :, 90:].abs().max() == 0 and listed[1, :, :, 130:].abs().max() == 0


def _unpack_masks(ref):
    shape = tuple(int(v) for v in ref["video_pred_masks_shape"])
    packed = ref["video_pred_masks_packed"]
    return np.unpackbits(packed, axis=-1, count=shape[-1]).astype(bool).reshape(shape)


@pytest.mark.parametrize("run_name", ["r50_clip_a", "swinl_clip_c"])
def test_infer_video_matches_released_inference_model(request, run_name):
    """Labels and bit masks exactly, scores within 1e-6 (the README's observed float noise is
    <= 1e-7). The forward clips were chosen with every final mask logit >= 4.8e-7 away from 0,
    so no mask pixel is allowed to flip."""
    run = request.getfixturevalue(run_name)
    ref, video = run["ref"], run["video"]
    assert video.image_size == tuple(int(v) for v in ref["image_size_unpadded"])
    np.testing.assert_array_equal(video.labels.cpu().numpy(), ref["video_pred_labels"])
    np.testing.assert_allclose(video.scores.cpu().numpy(), ref["video_pred_scores"], rtol=0, atol=1e-6)
    masks = video.masks.cpu().numpy()
    expected = _unpack_masks(ref)
    assert masks.shape == expected.shape
    differing = int((masks != expected).sum())
    assert differing == 0, f"{differing} mask pixels differ"
