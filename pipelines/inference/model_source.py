"""What MODEL means for `ctvis predict`: the experiment (model config, test sizes) and pinned weights.

MODEL is one of
- an experiment YAML, with the weights given as ``model.weights=URI`` (an official CTVIS ``.pth``, a
  Mask2Former COCO ``.pkl``, our ``model.pt`` or a checkpoint directory);
- one of our training checkpoint directories (local or ``s3://``): its ``config.yaml`` and ``state.pt``;
- a registered model, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: the ``config.yaml`` and
  ``model.pt`` registered together.

Weights are resolved by `pipelines.weights` (the same resolver as training's ``init_weights``): a
registry alias is pinned to its version once, here, so every worker loads the same weights.
Overrides (``model.tracker.match_score_thr=0.4``, ``data.min_size_test=480``) apply on top.
"""
from __future__ import annotations

import dataclasses
import tempfile
from typing import Any, Optional, Sequence

from pipelines import storage
from pipelines.config import ConfigError, build_experiment, load_experiment, parse_yaml
from pipelines.weights import (CHECKPOINT_STATE_FILE, WeightsError, WeightsSource, check_checkpoint_complete,
                              fetch_registered_file, is_registry_uri, resolve_weights)

CONFIG_FILE = "config.yaml"  # beside the weights in checkpoints and registered models
WEIGHTS_KEY = "model.weights"


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    experiment: Any  # pipelines.config.Experiment (model config and test sizes)
    weights: WeightsSource  # from an output cache: the weights that made it (not loaded again)
    description: str  # what the user named, for messages and the MLflow run


def split_weights_override(overrides: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """(the value of ``model.weights=URI`` if given, the other overrides)."""
    weights, rest = None, []
    for text in overrides:
        if text.startswith(WEIGHTS_KEY + "="):
            weights = text[len(WEIGHTS_KEY) + 1:]
        else:
            rest.append(text)
    return weights, rest


def resolve_model(model: str, overrides: Sequence[str] = (), tracking_uri: Optional[str] = None) -> ResolvedModel:
    """MODEL + overrides -> experiment and pinned weights (see the module notes). Raises
    `WeightsError` / `ConfigError` naming what is missing."""
    weights_uri, overrides = split_weights_override(overrides)
    if model.endswith((".yaml", ".yml")) and not is_registry_uri(model):
        if not weights_uri:
            raise ConfigError(f"{model}: an experiment YAML has no weights of its own: add model.weights=URI (an "
                              f"official .pth / .pkl, a model.pt, a checkpoint directory or models:/NAME@ALIAS)")
        experiment = load_experiment(model, overrides)
        return ResolvedModel(experiment, resolve_weights(weights_uri, tracking_uri), storage.redact(weights_uri))
    if weights_uri:
        raise ConfigError(f"{storage.redact(model)}: model.weights is for an experiment YAML; a checkpoint or a "
                          f"registered model brings its own weights")
    if is_registry_uri(model):
        source = resolve_weights(model, tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            config_path = fetch_registered_file(source, CONFIG_FILE, tmp)  # only this file, not the weights
            if config_path is None:
                raise WeightsError(f"{model}: the registered version {source.registry_version} has no {CONFIG_FILE} "
                                   f"beside its weights: run it as EXPERIMENT.yaml model.weights={model}")
            text = config_path.read_text()
        where = f"{model} (version {source.registry_version})"
        return ResolvedModel(build_experiment(parse_yaml(text, where), where, overrides), source, model)
    # A checkpoint directory.
    source = resolve_weights(model, tracking_uri)
    config_uri = storage.join(model, CONFIG_FILE)
    try:
        if not storage.exists(storage.join(model, CHECKPOINT_STATE_FILE)):
            raise WeightsError(f"{storage.redact(model)}: not an experiment YAML, a checkpoint directory (no "
                               f"{CHECKPOINT_STATE_FILE}) or a registry URI (models:/NAME@ALIAS)")
        check_checkpoint_complete(model)
        if not storage.exists(config_uri):
            raise WeightsError(f"{storage.redact(model)}: the checkpoint has no {CONFIG_FILE} (saved by an older "
                               f"version): run it as EXPERIMENT.yaml model.weights={storage.redact(model)}")
        text = storage.read_text(config_uri)
    except storage.StorageError as error:
        raise WeightsError(f"{storage.redact(model)}: {error}") from None
    where = storage.redact(config_uri)
    return ResolvedModel(build_experiment(parse_yaml(text, where), where, overrides), source, storage.redact(model))



def model_from_cache(cache_uri: str, overrides: Sequence[str] = ()) -> ResolvedModel:
    """The model an output cache was made with (its resolved experiment), with `overrides` on top:
    a re-run from the cache changes the tracker and post-processing options this way."""
    from pipelines.inference.cache import CACHE_MANIFEST, read_cache_manifest

    weights_uri, overrides = split_weights_override(overrides)
    if weights_uri:
        raise ConfigError(f"{storage.redact(cache_uri)}: model.weights with --from-cache: the cache holds the "
                          f"network's outputs, only the tracker and post-processing run again")
    info = read_cache_manifest(cache_uri)
    where = storage.redact(storage.join(cache_uri, CACHE_MANIFEST))
    experiment = build_experiment(parse_yaml(info["experiment"], where), where, overrides)
    return ResolvedModel(experiment, WeightsSource(info["weights"], info["weights"]),
                         f"{info['model']} (from the output cache {storage.redact(cache_uri)})")
