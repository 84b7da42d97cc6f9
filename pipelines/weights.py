"""Model weights by URI: one resolver and one loader for every place that starts from weights.

A weights URI is any of
- a file, local or ``s3://``: an official CTVIS ``.pth``, a Mask2Former COCO ``.pkl``, our exported
  ``model.pt`` or a training checkpoint's ``state.pt``;
- one of our checkpoint directories (``.../checkpoint_step0001000``: its ``state.pt`` is used);
- a registered model, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, looked up in the MLflow
  registry (its ``model.pt``).

`check_weights` runs on the driver before anything starts: it reads the file the way the workers
will (``torch.load(weights_only=True)``, or a restricted unpickler for ``.pkl``) and matches its
tensors against the model without allocating it (meta device). A file that cannot be read safely,
holds no tensor the model can use, or a registry entry that does not exist is a `WeightsError`
naming the URI and the reason; the message never suggests loading unsafely.
`load_weights` is what the workers call to initialise a model.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

from pipelines import storage

WEIGHTS_FORMAT = "ctvis-weights-v1"  # the tag of our exported weights (model/model.pt)
CHECKPOINT_STATE_FILE = "state.pt"  # pipelines.train.state.STATE_FILE (kept free of a torch import here)
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))/?$")


class WeightsError(ValueError):
    """Weights that cannot be used; the message names the URI and the reason."""


CHECKPOINT_META_FILE = "meta.json"  # pipelines.train.state.META_FILE


def check_checkpoint_complete(directory_uri: str) -> None:
    """Refuse a training checkpoint directory that was not copied whole (its upload or copy was
    killed): ``meta.json`` is written last and lists every file with its size. Checkpoints from
    before that list was kept are taken as they are."""
    meta_uri = storage.join(directory_uri, CHECKPOINT_META_FILE)
    try:
        meta = storage.read_json(meta_uri)
    except storage.StorageNotFound:
        raise WeightsError(f"{storage.redact(directory_uri)}: incomplete checkpoint: no {CHECKPOINT_META_FILE} (it is "
                           f"written last; the copy was interrupted). Use an earlier checkpoint of the run.") from None
    except storage.StorageError as error:
        raise WeightsError(f"{storage.redact(directory_uri)}: unreadable checkpoint metadata: {error}") from None
    for name, expected in (meta.get("files") or {}).items():
        uri = storage.join(directory_uri, name)
        try:
            found = storage.size(uri)
        except storage.StorageNotFound:
            found = None
        except storage.StorageError as error:
            raise WeightsError(f"{storage.redact(uri)}: cannot check the checkpoint file: {error}") from None
        if found != int(expected):
            what = "missing" if found is None else f"{found} bytes, {meta_uri.rsplit('/', 1)[-1]} says {expected}"
            raise WeightsError(f"{storage.redact(directory_uri)}: incomplete checkpoint: {name} is {what} (the copy was "
                               "interrupted). Use an earlier checkpoint of the run.")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """A weights URI, pinned: registry aliases resolved to their version (so every worker and every
    resumed driver loads the same weights)."""

    uri: str  # as given (for messages and MLflow tags)
    location: str  # what to read: a file/dir URI, or models:/NAME/VERSION
    tracking_uri: Optional[str] = None  # the registry, for models:/ URIs
    registry_version: Optional[str] = None  # "NAME/VERSION" for registered models


def is_registry_uri(uri: str) -> bool:
    return uri.startswith("models:/")


def resolve_weights(uri: str, tracking_uri: Optional[str] = None) -> WeightsSource:
    """Pin `uri`: a registry URI must name an existing model version (an alias becomes its version);
    a file or directory must exist."""
    if is_registry_uri(uri):
        match = _REGISTRY_URI.match(uri)
        if match is None:
            raise WeightsError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from pipelines.mlflow_runs import resolve_tracking_uri

        registry = resolve_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=registry, registry_uri=registry)
        name = match["name"]
        try:
            if match["alias"]:
                version = client.get_model_version_by_alias(name, match["alias"]).version
            else:
                version = client.get_model_version(name, match["version"]).version
        except MlflowException as error:
            what = f"alias '{match['alias']}'" if match["alias"] else f"version {match['version']}"
            known = _registered_versions(client, name)
            raise WeightsError(f"{uri}: the registry at {storage.redact(registry)} has no {what} of model "
                               f"'{name}' ({known}; {_first_line(error)})") from None
        return WeightsSource(uri, f"models:/{name}/{version}", registry, f"{name}/{version}")
    try:
        if not storage.exists(uri):
            raise WeightsError(f"{storage.redact(uri)}: no such weights file or checkpoint directory")
    except storage.StorageError as error:
        raise WeightsError(f"{storage.redact(uri)}: cannot be read ({error})") from None
    return WeightsSource(uri, uri)


def _registered_versions(client: Any, name: str) -> str:
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except Exception:  # noqa: BLE001 - only for the message
        return "its versions could not be listed"
    return f"versions: {versions}" if versions else f"no model named '{name}' is registered"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def fetch(source: WeightsSource, directory: str | Path) -> Path:
    """A local file holding the weights (remote files and registry artifacts are copied into `directory`)."""
    directory = Path(directory)
    if source.registry_version is not None:
        import mlflow.artifacts

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_version_root(source), dst_path=str(directory),
                                                             tracking_uri=source.tracking_uri))
        except Exception as error:  # noqa: BLE001 - reported with the URI
            raise WeightsError(f"{source.uri}: could not download {source.location}: {_first_line(error)}") from None
        candidates = [local] if local.is_file() else sorted(local.rglob("model.pt")) or sorted(local.rglob("*.pt*"))
        if not candidates:
            raise WeightsError(f"{source.uri}: {source.location} holds no model.pt")
        return candidates[0]
    local = storage.local_path(source.location)
    if local is not None:
        if local.is_dir():
            check_checkpoint_complete(str(local))
            return local / CHECKPOINT_STATE_FILE
        return local
    target = directory / Path(storage.split_uri(source.location)[1]).name
    try:
        if storage.exists(storage.join(source.location, CHECKPOINT_STATE_FILE)):
            check_checkpoint_complete(source.location)
            target = directory / CHECKPOINT_STATE_FILE
            target.write_bytes(storage.read_bytes(storage.join(source.location, CHECKPOINT_STATE_FILE)))
        else:
            target.write_bytes(storage.read_bytes(source.location))
    except storage.StorageError as error:
        raise WeightsError(f"{storage.redact(source.uri)}: {error}") from None
    return target


def _version_root(source: WeightsSource) -> str:
    """The artifact URI of a registered model version (`source` pinned to NAME/VERSION)."""
    from mlflow.tracking import MlflowClient

    name, version = source.registry_version.split("/")
    client = MlflowClient(tracking_uri=source.tracking_uri, registry_uri=source.tracking_uri)
    return client.get_model_version_download_uri(name, version).rstrip("/")


def fetch_registered_file(source: WeightsSource, name: str, directory: str | Path) -> Optional[Path]:
    """One file that sits beside the weights of a registered model version (its ``config.yaml``),
    copied into `directory` without the weights themselves (hundreds of MB for an R50); None when the
    version has no such file. Both layouts are found: the pyfunc model keeps its files under
    ``artifacts/``, an older registration keeps them at the top."""
    import mlflow.artifacts

    try:
        root = _version_root(source)
        for folder in ("", "artifacts"):
            listing = mlflow.artifacts.list_artifacts(artifact_uri=f"{root}/{folder}" if folder else root,
                                                      tracking_uri=source.tracking_uri)
            if any(Path(entry.path).name == name and not entry.is_dir for entry in listing):
                relative = f"{folder}/{name}" if folder else name
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{relative}",
                                                                dst_path=str(directory),
                                                                tracking_uri=source.tracking_uri))
    except Exception as error:  # noqa: BLE001 - reported with the URI
        raise WeightsError(f"{source.uri}: could not read {name} of {source.location}: {_first_line(error)}") from None
    return None


@dataclasses.dataclass
class WeightsFile:
    kind: str  # "ours" (our model.pt / training state.pt: our parameter names) or "official" (detectron2 names)
    tensors: dict  # name -> torch.Tensor


def read_weights(path: Path, name: str) -> WeightsFile:
    """Read a weights file safely (`name` is what messages call it)."""
    import torch

    from models.checkpoint import official_tensors, read_official_checkpoint

    suffix = path.suffix.lower()
    if not path.is_file():
        raise WeightsError(f"{name}: no such file")
    if suffix in (".pt", ".pth"):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if re.search(r"(?i)unsupported(?: global:)? GLOBAL", str(error)) is None:
                raise WeightsError(f"{name}: not a readable PyTorch checkpoint (corrupt, truncated or another "
                                   f"format)") from None
            raise WeightsError(f"{name}: refused: the file holds Python objects other than tensors and plain "
                               f"containers ({_unsafe_global(error)}); only weights-only checkpoints are read, "
                               f"so a file from the internet cannot run code") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
            raise WeightsError(f"{name}: not a readable PyTorch checkpoint (corrupt or truncated?): "
                               f"{_first_line(error)}") from None
        if isinstance(payload, dict) and (payload.get("format") == WEIGHTS_FORMAT or "format_version" in payload):
            tensors = payload.get("model")
            if not isinstance(tensors, dict):
                raise WeightsError(f"{name}: a CTVIS weights file without its 'model' state dict")
            return WeightsFile("ours", tensors)
        try:  # an official .pth, already loaded: not read a second time
            return WeightsFile("official", official_tensors(payload, name))
        except ValueError as error:
            raise WeightsError(str(error)) from None
    elif suffix != ".pkl":
        raise WeightsError(f"{name}: unknown weights format {suffix or '(no suffix)'!r}: expected an official "
                           f".pth / .pkl, our model.pt or a checkpoint directory")
    try:
        return WeightsFile("official", read_official_checkpoint(path))
    except (ValueError, pickle.UnpicklingError, EOFError) as error:
        message = str(error).split(": ", 1)[-1] if str(error).startswith(str(path)) else str(error)
        raise WeightsError(f"{name}: {_safe_reason(message)}") from None


def _unsafe_global(error: BaseException) -> str:
    found = re.search(r"(?i)unsupported(?: global:)? GLOBAL ([\w.]+)|global ([\w.]+)", str(error))
    return f"it references {found.group(1) or found.group(2)}" if found else "an object that is not plain data"


def _safe_reason(message: str) -> str:
    """torch's unpickling message advises `weights_only=False`: never pass that on."""
    if "weights_only" in message or "Weights only load failed" in message:
        return f"refused: the file holds Python objects other than tensors ({_unsafe_global(Exception(message))})"
    return message.strip().splitlines()[0][:300]


@dataclasses.dataclass
class WeightsCheck:
    source: WeightsSource
    kind: str
    matched: int  # model parameters/buffers the file provides, with the right shape
    total: int  # the model's parameters/buffers
    shape_mismatched: int
    unexpected: int

    def summary(self) -> str:
        return (f"{storage.redact(self.source.uri)} ({self.kind} weights"
                + (f", registry version {self.source.registry_version}" if self.source.registry_version else "")
                + f"): {self.matched} of {self.total} model tensors provided, {self.shape_mismatched} with another "
                f"shape, {self.unexpected} not used")


def check_weights(uri: str, model_config: Any, tracking_uri: Optional[str] = None) -> WeightsCheck:
    """Open `uri` as the workers will and match it against the model of `model_config` (built on the
    meta device: no memory, no time). Raises WeightsError when nothing in the file fits the model."""
    import torch

    from models.checkpoint import convert_official_state_dict
    from models.model import build_model

    source = resolve_weights(uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights = read_weights(fetch(source, tmp), storage.redact(uri))
    with torch.device("meta"):
        targets = build_model(model_config).state_dict()
    if weights.kind == "official":
        tensors, _, unexpected, _ = convert_official_state_dict(weights.tensors)
        unexpected_count = len(unexpected)
        targets = {k[len("network."):]: v for k, v in targets.items() if k.startswith("network.")} or targets
    else:
        tensors, unexpected_count = weights.tensors, 0
    usable, skipped, unexpected_names = _match(tensors, targets)
    check = WeightsCheck(source, weights.kind, len(usable), len(targets), len(skipped),
                         unexpected_count + len(unexpected_names))
    if not usable:
        raise WeightsError(f"{check.summary()}: nothing in the file fits this model - is it a checkpoint of the "
                           f"same architecture (model.preset)?")
    return check


def load_weights(model: Any, source: WeightsSource) -> str:
    """Initialise `model` (a CTVISModel) from `source`; returns the load report as text."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = read_weights(fetch(source, tmp), storage.redact(source.uri))
    if weights.kind == "official":
        return model.load_official_checkpoint(weights.tensors).summary().replace(
            "checkpoint <state dict>", f"checkpoint {storage.redact(source.uri)}", 1)
    targets = model.state_dict()
    usable, skipped, unexpected = _match(weights.tensors, targets)
    model.load_state_dict(usable, strict=False)
    missing = sorted(set(targets) - set(usable))
    lines = [f"checkpoint {storage.redact(source.uri)}: loaded {len(usable)}, missing {len(missing)}, "
             f"unexpected {len(unexpected)}, shape-skipped {len(skipped)}"]
    lines += [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
    lines += [f"  shape-skipped: {k}" for k in skipped]
    return "\n".join(lines)


def _match(tensors: dict, targets: dict) -> tuple[dict, list[str], list[str]]:
    """(tensors the model takes as they are, names whose shape differs, names the model lacks)."""
    usable = {k: v for k, v in tensors.items() if k in targets and tuple(v.shape) == tuple(targets[k].shape)}
    skipped = sorted(k for k in tensors if k in targets and k not in usable)
    unexpected = sorted(set(tensors) - set(targets))
    return usable, skipped, unexpected
