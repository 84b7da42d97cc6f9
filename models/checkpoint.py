"""Official CTVIS / Mask2Former checkpoints -> this project's parameter names.

Sources, both detectron2-format:

* CTVIS model-zoo ``.pth``: ``torch.save({"model": state_dict, ...})``. Read with
  ``torch.load(map_location="cpu", weights_only=True)``, which refuses anything but tensors and
  plain containers.
* Mask2Former COCO ``.pkl``: a pickled dict whose ``"model"`` holds numpy arrays. Read with
  ``SafeUnpickler``, which only admits numpy array reconstruction and plain containers, so a
  file from the internet cannot execute code.

The renaming is an explicit, ordered list of rules (``RENAME_RULES``); an official key that no
rule matches is reported as unexpected, never guessed. Loading returns a ``LoadReport``
(loaded / missing / unexpected / shape-skipped / ignored), e.g. a COCO checkpoint's 81-way class
head is shape-skipped and the re-id head, absent from it, stays as initialised.
"""
from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .ctvis import CTVISNetwork

Replacement = Union[str, Callable[[re.Match], str]]

_P = "sem_seg_head.pixel_decoder."
_D = "sem_seg_head.predictor."


def _fpn_rule(target: str, part: str) -> Callable[[re.Match], str]:
    # The original names its FPN convs adapter_{i}/layer_{i} with i = 1 for the finest backbone
    # level (res2); ours are keyed by the backbone level itself.
    def rename(match: re.Match) -> str:
        return f"pixel_decoder.{target}.res{int(match.group(1)) + 1}.{part}.{match.group(2)}"

    return rename


# (official key pattern, our name) in priority order; the first full match wins.
RENAME_RULES: List[Tuple[str, Replacement]] = [
    # --- ResNet (detectron2 build_resnet_backbone) ---
    (r"backbone\.stem\.conv1\.weight", "backbone.stem.conv.weight"),
    (r"backbone\.stem\.conv1\.norm\.(weight|bias|running_mean|running_var)", r"backbone.stem.norm.\1"),
    (r"backbone\.(res[2-5]\.\d+)\.conv([123])\.weight", r"backbone.\1.conv\2.weight"),
    (r"backbone\.(res[2-5]\.\d+)\.conv([123])\.norm\.(weight|bias|running_mean|running_var)", r"backbone.\1.norm\2.\3"),
    (r"backbone\.(res[2-5]\.\d+)\.shortcut\.weight", r"backbone.\1.shortcut_conv.weight"),
    (r"backbone\.(res[2-5]\.\d+)\.shortcut\.norm\.(weight|bias|running_mean|running_var)", r"backbone.\1.shortcut_norm.\2"),
    # --- Swin (D2SwinTransformer) ---
    (r"backbone\.patch_embed\.(proj|norm)\.(weight|bias)", r"backbone.patch_embed.\1.\2"),
    (r"backbone\.layers\.(\d+)\.(blocks\.\d+\..+)", r"backbone.stages.\1.\2"),
    (r"backbone\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", r"backbone.stages.\1.downsample.\2"),
    (r"backbone\.norm(\d)\.(weight|bias)", r"backbone.out_norms.\1.\2"),
    # --- pixel decoder (MSDeformAttnPixelDecoder) ---
    (_P + r"input_proj\.(\d+)\.0\.(weight|bias)", r"pixel_decoder.input_projections.\1.conv.\2"),
    (_P + r"input_proj\.(\d+)\.1\.(weight|bias)", r"pixel_decoder.input_projections.\1.norm.\2"),
    (_P + r"transformer\.level_embed", "pixel_decoder.level_embed"),
    (_P + r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
     r"pixel_decoder.encoder_layers.\1.attention.\2.\3"),
    (_P + r"transformer\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.attention_norm.\2"),
    (_P + r"transformer\.encoder\.layers\.(\d+)\.linear([12])\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.ffn.linear\2.\3"),
    (_P + r"transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.ffn_norm.\2"),
    (_P + r"mask_features\.(weight|bias)", r"pixel_decoder.mask_projection.\1"),
    (_P + r"adapter_(\d+)\.(weight)", _fpn_rule("fpn_lateral", "conv")),
    (_P + r"adapter_(\d+)\.norm\.(weight|bias)", _fpn_rule("fpn_lateral", "norm")),
    (_P + r"layer_(\d+)\.(weight)", _fpn_rule("fpn_output", "conv")),
    (_P + r"layer_(\d+)\.norm\.(weight|bias)", _fpn_rule("fpn_output", "norm")),
    # --- transformer decoder (CLMultiScaleMaskedTransformerDecoder) ---
    (_D + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"decoder.layers.\1.cross_attn.\2"),
    (_D + r"transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)", r"decoder.layers.\1.cross_attn_norm.\2"),
    (_D + r"transformer_self_attention_layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"decoder.layers.\1.self_attn.\2"),
    (_D + r"transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)", r"decoder.layers.\1.self_attn_norm.\2"),
    (_D + r"transformer_ffn_layers\.(\d+)\.linear([12])\.(weight|bias)", r"decoder.layers.\1.ffn.linear\2.\3"),
    (_D + r"transformer_ffn_layers\.(\d+)\.norm\.(weight|bias)", r"decoder.layers.\1.ffn_norm.\2"),
    (_D + r"decoder_norm\.(weight|bias)", r"decoder.output_norm.\1"),
    (_D + r"(?:query_feat|static_query)\.weight", "decoder.query_features.weight"),  # static_query: pre-v2 name
    (_D + r"query_embed\.weight", "decoder.query_positions.weight"),
    (_D + r"level_embed\.weight", "decoder.level_embed.weight"),
    (_D + r"input_proj\.(\d+)\.(weight|bias)", r"decoder.input_projections.\1.\2"),
    (_D + r"class_embed\.(weight|bias)", r"decoder.class_head.\1"),
    (_D + r"mask_embed\.layers\.(\d+)\.(weight|bias)", r"decoder.mask_head.layers.\1.\2"),
    (_D + r"reid_embed\.layers\.(\d+)\.(weight|bias)", r"decoder.reid_head.layers.\1.\2"),
]
_COMPILED_RULES = [(re.compile(pattern), replacement) for pattern, replacement in RENAME_RULES]

# Official entries that are not part of the network: training buffers of the loss.
IGNORED_KEYS = {
    "criterion.empty_weight": "training-only buffer of the set criterion (no-object class weight)",
}


def official_to_ours(key: str) -> Optional[str]:
    """Our parameter name for an official key, or None when no rule matches."""
    for pattern, replacement in _COMPILED_RULES:
        match = pattern.fullmatch(key)
        if match is not None:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


@dataclass
class LoadReport:
    loaded: List[str] = field(default_factory=list)  # our names that received a value
    missing: List[str] = field(default_factory=list)  # our names left as initialised
    unexpected: List[str] = field(default_factory=list)  # official keys with no place in the network
    shape_skipped: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)  # official keys known not to belong to the network
    source: str = ""

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_skipped)

    def summary(self) -> str:
        lines = [
            f"checkpoint {self.source}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-skipped {len(self.shape_skipped)}, ignored {len(self.ignored)}"
        ]
        lines += [f"  missing: {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  shape-skipped: {k} checkpoint {a} vs network {b}" for k, a, b in self.shape_skipped]
        lines += [f"  ignored: {k} ({IGNORED_KEYS.get(k, '')})" for k in self.ignored]
        return "\n".join(lines)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 ``.pkl`` weights: numpy arrays, numpy scalars and plain containers
    only. Any other global (``os.system``, ``builtins.eval``, torch internals ...) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("collections", "OrderedDict"): ("collections", "OrderedDict"),
        ("_codecs", "encode"): ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str):
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights pickle")
        import importlib

        return getattr(importlib.import_module(target[0]), target[1])


def safe_load_pickle(data: bytes) -> object:
    return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_official_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The detectron2 state dict stored in a ``.pth`` (torch, weights_only) or ``.pkl``
    (numpy pickle, restricted) file, as CPU tensors keyed by official names."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message suggests loading unsafely; pass on only what the file asked for.
            found = re.search(r"(?i)unsupported(?: global:)? GLOBAL ([\w.]+)", str(error))
            what = f"it references {found.group(1)}" if found else "it holds objects other than tensors"
            raise ValueError(f"{path}: refused: a weights-only load failed ({what})") from None
    elif suffix == ".pkl":
        try:
            obj = safe_load_pickle(path.read_bytes())
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: refused to load: {error}") from error
    else:
        raise ValueError(f"{path}: unknown checkpoint format {suffix!r} (expected .pth or .pkl)")
    return official_tensors(obj, str(path))


def official_tensors(obj: object, source: str) -> Dict[str, torch.Tensor]:
    """The state dict in a loaded detectron2 checkpoint object (``{"model": {...}}`` or the dict
    itself) as CPU tensors keyed by official names; `source` names it in errors."""
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a dict (with a 'model' entry), got {type(obj).__name__}")
    tensors: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not an array")
    return tensors


def convert_official_state_dict(
    official: Mapping[str, Union[torch.Tensor, np.ndarray]],
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str], List[str]]:
    """Rename an official state dict. Returns (ours, our name -> official key, unexpected
    official keys, ignored official keys)."""
    ours: Dict[str, torch.Tensor] = {}
    sources: Dict[str, str] = {}
    unexpected, ignored = [], []
    for key, value in official.items():
        if key in IGNORED_KEYS:
            ignored.append(key)
            continue
        name = official_to_ours(key)
        if name is None:
            unexpected.append(key)
            continue
        if name in ours:
            raise ValueError(f"official keys {sources[name]!r} and {key!r} both map to {name!r}")
        ours[name] = torch.as_tensor(value)
        sources[name] = key
    return ours, sources, unexpected, ignored


def load_official_weights(
    network: nn.Module,
    source: Union[str, Path, Mapping[str, Union[torch.Tensor, np.ndarray]]],
    strict: bool = False,
) -> LoadReport:
    """Copy an official checkpoint (a file path or an already read state dict) into ``network``.

    ``network`` is a ``CTVISNetwork`` or a module holding one as ``.network`` (the assembled
    ``CTVISModel``): the official names map to the network's own parameter names either way.
    Entries whose shape differs from ours are skipped and reported; with ``strict`` anything
    missing, unexpected or shape-skipped raises ``ValueError`` with the full report."""
    if not isinstance(network, CTVISNetwork) and isinstance(getattr(network, "network", None), CTVISNetwork):
        network = network.network
    official = read_official_checkpoint(source) if isinstance(source, (str, Path)) else source
    ours, sources, unexpected_official, ignored = convert_official_state_dict(official)
    report = LoadReport(ignored=ignored, source=str(source) if isinstance(source, (str, Path)) else "<state dict>")
    report.unexpected.extend(unexpected_official)
    targets = network.state_dict()
    to_load: Dict[str, torch.Tensor] = {}
    for name, value in ours.items():
        if name not in targets:
            report.unexpected.append(sources[name])
        elif tuple(value.shape) != tuple(targets[name].shape):
            report.shape_skipped.append((name, tuple(value.shape), tuple(targets[name].shape)))
        else:
            to_load[name] = value.to(dtype=targets[name].dtype)
    network.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(targets) - set(to_load))
    if strict and not report.complete:
        raise ValueError(report.summary())
    return report
