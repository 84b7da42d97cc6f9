"""Official checkpoint conversion: every official key has exactly one place in our networks, files
are read without executing code, and the load report is honest."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from models.checkpoint import (
    IGNORED_KEYS,
    load_official_weights,
    official_to_ours,
    read_official_checkpoint,
    safe_load_pickle,
)
from models.ctvis import build_network
from models.presets import NETWORK_PRESETS, tiny_network
from tests.weightgen import generate_tensor, load_manifest

MANIFEST_CASES = [
    ("r50", NETWORK_PRESETS["ctvis_r50_ytvis19"], 564, 44_157_353),
    ("swinl", NETWORK_PRESETS["ctvis_swinl_ytvis19"], 656, 215_709_085),
]


def meta_network(config):
    # shapes only: building on the meta device allocates nothing
    with torch.device("meta"):
        return build_network(config)


@pytest.mark.parametrize("model,preset,num_entries,num_parameter_elements", MANIFEST_CASES)
def test_every_official_key_maps_to_exactly_one_entry(reference_dir, model, preset, num_entries, num_parameter_elements):
    manifest = load_manifest(reference_dir / "model" / f"manifest_{model}_ytvis19.json")
    assert len(manifest["state_dict"]) == num_entries
    network = meta_network(preset())
    ours = network.state_dict()
    parameters = dict(network.named_parameters())
    targets = []
    for entry in manifest["state_dict"]:
        key = entry["key"]
        if key in IGNORED_KEYS:
            continue
        name = official_to_ours(key)
        assert name is not None, f"no rename rule for {key}"
        assert name in ours, f"{key} -> {name}, which the network does not have"
        assert tuple(ours[name].shape) == tuple(entry["shape"]), key
        # parameters stay parameters, buffers stay buffers
        assert (name in parameters) == (entry["kind"] == "parameter"), key
        targets.append(name)
    duplicates = [name for name, count in Counter(targets).items() if count > 1]
    assert not duplicates
    assert set(targets) == set(ours), f"unmapped network entries: {sorted(set(ours) - set(targets))}"
    assert sum(p.numel() for p in parameters.values()) == num_parameter_elements
    # pixel_mean / pixel_std are non-persistent, as in the original
    assert "pixel_mean" not in ours and "pixel_std" not in ours
    expected = {b["key"]: b["value"] for b in manifest["non_persistent_buffers"]}
    real = build_network(tiny_network())
    assert real.pixel_mean.flatten().tolist() == pytest.approx(expected["pixel_mean"])
    assert real.pixel_std.flatten().tolist() == pytest.approx(expected["pixel_std"])


def _tiny_official_subset(network_config):
    """An official-format dict for the tiny network's decoder heads (names as CTVIS writes them)."""
    network = build_network(network_config)
    ours = network.state_dict()
    official = {}
    reverse = {
        "decoder.class_head.weight": "sem_seg_head.predictor.class_embed.weight",
        "decoder.class_head.bias": "sem_seg_head.predictor.class_embed.bias",
        "decoder.query_features.weight": "sem_seg_head.predictor.query_feat.weight",
        "decoder.query_positions.weight": "sem_seg_head.predictor.query_embed.weight",
        "decoder.output_norm.weight": "sem_seg_head.predictor.decoder_norm.weight",
        "decoder.output_norm.bias": "sem_seg_head.predictor.decoder_norm.bias",
    }
    for i in range(3):
        for part in ("weight", "bias"):
            reverse[f"decoder.mask_head.layers.{i}.{part}"] = f"sem_seg_head.predictor.mask_embed.layers.{i}.{part}"
            reverse[f"decoder.reid_head.layers.{i}.{part}"] = f"sem_seg_head.predictor.reid_embed.layers.{i}.{part}"
    for ours_name, official_name in reverse.items():
        assert official_to_ours(official_name) == ours_name
        official[official_name] = generate_tensor(official_name, ours[ours_name].shape)
    return network, official


def test_pth_checkpoint_loads_with_report(tmp_path):
    network, official = _tiny_official_subset(tiny_network())
    official["criterion.empty_weight"] = torch.ones(4)
    official["sem_seg_head.predictor.not_a_layer.weight"] = torch.zeros(2)
    path = tmp_path / "model_final.pth"
    torch.save({"model": official, "iteration": 123}, path)
    report = load_official_weights(network, path)
    assert report.ignored == ["criterion.empty_weight"]
    assert report.unexpected == ["sem_seg_head.predictor.not_a_layer.weight"]
    assert not report.shape_skipped
    assert len(report.loaded) == len(official) - 2
    assert "decoder.layers.0.cross_attn.in_proj_weight" in report.missing
    assert torch.equal(network.decoder.class_head.weight, official["sem_seg_head.predictor.class_embed.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_official_weights(network, path, strict=True)


def test_coco_pkl_skips_class_head_and_keeps_reid_head(tmp_path):
    network, official = _tiny_official_subset(tiny_network(num_classes=3))
    # a COCO Mask2Former checkpoint: 81-way class head, no re-id head, numpy arrays
    coco = {k: v.numpy() for k, v in official.items() if "reid_embed" not in k}
    coco["sem_seg_head.predictor.class_embed.weight"] = np.ones((81, 32), dtype=np.float32)
    coco["sem_seg_head.predictor.class_embed.bias"] = np.ones((81,), dtype=np.float32)
    path = tmp_path / "model_final_coco.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": coco, "__author__": "Mask2Former", "matching_heuristics": True}, handle)
    reid_before = network.decoder.reid_head.layers[0].weight.detach().clone()
    report = load_official_weights(network, path)
    assert sorted(s[0] for s in report.shape_skipped) == ["decoder.class_head.bias", "decoder.class_head.weight"]
    assert ("decoder.class_head.weight", (81, 32), (4, 32)) in report.shape_skipped
    assert "decoder.reid_head.layers.0.weight" in report.missing
    assert torch.equal(network.decoder.reid_head.layers[0].weight, reid_before)
    assert torch.equal(
        network.decoder.query_features.weight, torch.from_numpy(coco["sem_seg_head.predictor.query_feat.weight"])
    )


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"x": np.zeros(2)}, "payload": _RunsCode(marker)}, handle)
    with pytest.raises(ValueError, match=r"refusing to load global (io|builtins)\.open"):
        read_official_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle(pickle.dumps(_RunsCode(marker)))
    assert not marker.exists()


def test_malicious_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="refused"):
        read_official_checkpoint(path)
    assert not marker.exists()


def test_pkl_with_protocol2_numpy_arrays_is_read(tmp_path):
    path = tmp_path / "old.pkl"
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5])}
    with open(path, "wb") as handle:
        pickle.dump({"model": arrays}, handle, protocol=2)
    state = read_official_checkpoint(path)
    assert torch.equal(state["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert state["b"].dtype == torch.float64
