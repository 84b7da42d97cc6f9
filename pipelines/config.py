"""Experiment configs: one YAML file = one experiment, validated strictly into typed objects.

An experiment file is plain data. Its keys are the names of the constructor arguments they feed.
Defaults live in code: the model part starts from a named preset in ``models.presets`` (frozen
dataclasses), the platform part from the pydantic models below. Validation is strict: an unknown
key, a wrong type or an out-of-range value is an error naming the file and the dotted key.

Command-line overrides take the form ``key.sub=value`` (the value is parsed as a YAML scalar or
flow collection, so ``train.optimizer.lr=2e-4`` is a float and ``data.train.0.ratio=2`` indexes a
list).

Only the standard library, pydantic and yaml are imported at module level; the model presets are
imported when a config is resolved, so ``ctvis --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from pipelines.redaction import is_secret_key, redact, redact_override

if TYPE_CHECKING:  # the model's config type, without importing torch when a config is loaded
    from models.model import CTVISConfig


class ConfigError(ValueError):
    """A config problem, always naming the file (or `<overrides>`) and the dotted key. The message
    never holds a secret (it is redacted when the error is made)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


# --------------------------------------------------------------------------------------------
# YAML: PyYAML follows YAML 1.1, where `1e-4` (no dot) is a *string*. Research configs write
# learning rates that way, so floats get the YAML 1.2 resolver.
class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


# --------------------------------------------------------------------------------------------
# The platform part of an experiment (data, training, evaluation, compute, tracking, storage).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetSpec(_Strict):
    """One dataset split: a catalog name (e.g. `ytvis_2019_train`) or a custom YTVIS-format split."""

    name: str = Field(min_length=1)
    ratio: float = Field(default=1.0, gt=0, description="sampling weight in joint training")
    annotations: Optional[str] = Field(default=None, description="URI of a YTVIS/COCO JSON (custom splits)")
    frames_root: Optional[str] = Field(default=None, description="URI of the frames root (custom splits)")
    shards: Optional[str] = Field(default=None, description="URI of ingested Parquet shards")


class CropConfig(_Strict):
    """The released "absolute_range" crop (a size range in pixels, sampled per clip)."""

    enabled: bool = True
    size: tuple[int, int] = (384, 600)
    # "sliding": the crop window moves monotonically across the clip (the paper; the released
    # pseudo-video crop). "first_position": every frame uses the first position, as the released
    # video crop (ctvis/data/vis/augmentation.py RandomCropClip) effectively does.
    motion: Literal["sliding", "first_position"] = "sliding"


class PseudoVideoConfig(_Strict):
    """How COCO images become pseudo-videos (N augmented copies of one image)."""

    augmentations: tuple[Literal["rotation"], ...] = ("rotation",)
    rotate_angle: float = Field(default=15.0, ge=0, le=180)
    min_size_train: tuple[int, ...] = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)
    max_size_train: int = Field(default=768, gt=0)
    crop: CropConfig = CropConfig()


class DataConfig(_Strict):
    train: tuple[DatasetSpec, ...] = Field(min_length=1)
    datasets_root: str = Field(default="datasets", description="URI under which catalog splits live (as DETECTRON2_DATASETS)")
    val: Optional[DatasetSpec] = None
    sampling_frame_num: int = Field(default=10, ge=1)
    sampling_frame_range: int = Field(default=20, ge=0)
    sampling_frame_shuffle: bool = False
    min_size_train: tuple[int, ...] = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)
    max_size_train: int = Field(default=768, gt=0)
    random_flip: Literal["flip_by_clip", "none"] = "flip_by_clip"
    crop: CropConfig = CropConfig()
    pseudo: PseudoVideoConfig = PseudoVideoConfig()
    min_size_test: int = Field(default=480, gt=0)
    max_size_test: int = Field(default=1333, gt=0)
    size_divisibility: int = Field(default=32, ge=1)
    decode_workers: int = Field(default=2, ge=1, description="Ray Data actors decoding/augmenting clips")


class OptimizerConfig(_Strict):
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    weight_decay_norm: float = Field(default=0.0, ge=0)
    weight_decay_embed: float = Field(default=0.0, ge=0)
    backbone_multiplier: float = Field(default=0.1, ge=0)


class ScheduleConfig(_Strict):
    max_iter: int = Field(default=16000, ge=1)
    steps: tuple[int, ...] = (6000, 12000)
    gamma: float = Field(default=0.1, gt=0)
    warmup_iters: int = Field(default=10, ge=0)
    warmup_factor: float = Field(default=1.0, gt=0, le=1)
    warmup_method: Literal["linear", "constant"] = "linear"

    @pydantic.model_validator(mode="after")
    def _steps_inside(self) -> "ScheduleConfig":
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be increasing, got {list(self.steps)}")
        if any(s > self.max_iter for s in self.steps):
            raise ValueError(f"steps {list(self.steps)} must not exceed max_iter {self.max_iter}: set "
                             f"train.schedule.steps too (or override only train.schedule.max_iter, which scales them)")
        return self


class GradClipConfig(_Strict):
    enabled: bool = True
    value: float = Field(default=0.01, gt=0)
    norm_type: float = Field(default=2.0, gt=0)


class TrainConfig(_Strict):
    batch_size: int = Field(default=16, ge=1, description="clips per step, across all workers")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    clip_gradients: GradClipConfig = GradClipConfig()
    amp: bool = Field(default=True, description="torch.autocast + GradScaler on GPU (ignored on CPU)")
    init_weights: Optional[str] = Field(default=None, description="URI of a .pkl/.pth checkpoint to start from")
    checkpoint_period: int = Field(default=1000, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    eval_period: int = Field(default=2000, ge=0, description="0 = only at the end")
    log_period: int = Field(default=20, ge=1)
    seed: int = Field(default=0, ge=0)
    run_name: Optional[str] = Field(default=None, description="Ray Train run name (default: the experiment's name); "
                                    "the same name and runs_root resume the run")
    fault_at_step: Optional[int] = Field(default=None, ge=0, description="fault injection for tests: the last worker "
                                         "fails once when it reaches this step (a marker in the run's storage "
                                         "keeps it from failing again after the restart)")


class EvalConfig(_Strict):
    """Which official metric set validation uses. Inference settings (top-k, chunk sizes) belong to
    the model: `model.inference`."""

    benchmark: Literal["ytvis", "ovis", "ytvis2022"] = "ytvis"
    max_videos: Optional[int] = Field(default=None, ge=1, description="validate on the first N videos of data.val")
    visualize_videos: int = Field(default=2, ge=0, description="validation videos drawn as overlay strips")


class ComputeConfig(_Strict):
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    max_failures: int = Field(default=3, ge=0, description="worker-group restarts (a lost worker or node) from "
                              "the last checkpoint before the run fails")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="Ray placement of the workers: PACK fills a node first (fast collectives); "
        "SPREAD puts them on different nodes where it can, so one lost node costs fewer workers")
    cpus_per_decoder: float = Field(default=0.25, gt=0, description="CPUs of each Ray Data clip-decoder actor")
    data_cpu_limit: Optional[float] = Field(default=None, gt=0, description="cap on the CPUs Ray Data may use per worker")
    stall_timeout_s: float = Field(default=300.0, gt=0, description="the driver warns (with what the cluster waits "
                                   "for) when no training step completes for this long")


class MlflowConfig(_Strict):
    tracking_uri: Optional[str] = Field(default=None, description="MLflow URI; default env or ./mlruns")
    experiment_name: Optional[str] = Field(default=None, description="default: the experiment's name")
    registered_model_name: Optional[str] = Field(default=None, description="default: the experiment's name")
    register_model: bool = Field(default=True, description="register the final model (sweep trials: the sweep does)")
    parent_run_id: Optional[str] = Field(default=None, description="nest the run under this MLflow run (sweeps)")
    outage_wait_s: float = Field(default=900.0, gt=0, description="training never waits for an unreachable "
                                 "tracking server during the run (metrics are queued); at the end it waits this "
                                 "long for it to deliver them and the model, then fails naming the server")


class S3Config(_Strict):
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    access_key_id: Optional[SecretStr] = None
    secret_access_key: Optional[SecretStr] = None


class StorageConfig(_Strict):
    runs_root: str = Field(default="runs", description="URI where Ray Train run state and checkpoints go")
    s3: S3Config = S3Config()


class PlatformConfig(_Strict):
    """Everything an experiment holds besides the model."""

    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    compute: ComputeConfig = ComputeConfig()
    tracking: MlflowConfig = MlflowConfig()
    storage: StorageConfig = StorageConfig()


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_LEVEL_KEYS = ("name", "description", "model") + tuple(PlatformConfig.model_fields)


# --------------------------------------------------------------------------------------------
# The model part: frozen dataclasses from `models`, updated field by field, strictly.
def _type_adapter(annotation: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(annotation, config=ConfigDict(strict=True))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def update_dataclass(instance: Any, updates: Any, path: str, source: str) -> Any:
    """Return a copy of a frozen dataclass with `updates` applied, validating every key strictly.

    Nested dataclass fields are updated recursively (a partial mapping keeps the other values);
    every other field is validated against its annotation in pydantic strict mode (ints are accepted
    for floats; lists for tuples). The dataclass's own ``__post_init__`` checks then run.
    """
    if updates is None:
        return instance
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: {path}: expected a mapping, got {type(updates).__name__}")
    cls = type(instance)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"{source}: {dotted}: unknown key{_suggest(key, names)}")
        annotation = hints[key]
        current = getattr(instance, key)
        if _is_dataclass_type(annotation) or (dataclasses.is_dataclass(current) and isinstance(value, dict)):
            changes[key] = update_dataclass(current, value, dotted, source)
            continue
        if isinstance(value, list):
            value = tuple(value) if typing.get_origin(annotation) is tuple or _is_tuple_union(annotation) else value
        try:
            changes[key] = _type_adapter(annotation).validate_python(value)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"{source}: {dotted}: {_first_error(exc)} (got {value!r})") from None
    try:
        return dataclasses.replace(instance, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {path or 'model'}: {exc}") from None


def _is_tuple_union(annotation: Any) -> bool:
    return any(typing.get_origin(arg) is tuple for arg in typing.get_args(annotation))


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int) or True)
    msg = err["msg"]
    return f"{msg} at {loc}" if loc else msg


def _suggest(key: Any, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(names)})"


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Experiment:
    """A fully resolved, validated experiment."""

    name: str
    description: str
    model_preset: str
    model: "CTVISConfig"  # frozen dataclass from models.presets, updated key by key
    platform: PlatformConfig
    source: str
    notes: tuple[str, ...] = ()  # what resolving the config decided for the user (e.g. a scaled schedule)

    @property
    def data(self) -> DataConfig:
        return self.platform.data

    @property
    def train(self) -> TrainConfig:
        return self.platform.train

    @property
    def eval(self) -> EvalConfig:
        return self.platform.eval

    @property
    def compute(self) -> ComputeConfig:
        return self.platform.compute

    @property
    def tracking(self) -> MlflowConfig:
        return self.platform.tracking

    @property
    def storage(self) -> StorageConfig:
        return self.platform.storage

    def to_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The resolved config as plain data (secrets masked unless asked), in a stable key order."""
        model = _plain(dataclasses.asdict(self.model))
        model = {"preset": self.model_preset, **model}
        platform = self.platform.model_dump(mode="json")
        endpoint = platform["storage"]["s3"].get("endpoint_url")
        if endpoint and not reveal_secrets:
            platform["storage"]["s3"]["endpoint_url"] = redact(endpoint)  # user:pass@ in the URL
        if reveal_secrets:
            s3 = self.platform.storage.s3
            for field in ("access_key_id", "secret_access_key"):
                secret = getattr(s3, field)
                platform["storage"]["s3"][field] = secret.get_secret_value() if secret else None
        return {"name": self.name, "description": self.description, "model": model, **platform}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def config_hash(self) -> str:
        """A short hash of the resolved config (secrets excluded), used as an MLflow tag."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> string value, for MLflow params (secrets masked)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, v in enumerate(value):
                    walk(f"{prefix}.{i}", v)
            else:
                out[prefix] = json.dumps(value) if not isinstance(value, str) else value

        walk("", self.to_dict())
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"<overrides>: '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"<overrides>: '{text}': empty key")
    value = parse_yaml(raw, f"<overrides> {key}") if raw.strip() else ""
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "<overrides>") -> dict[str, Any]:
    """Apply `key.sub=value` overrides to the raw (unvalidated) mapping of an experiment file."""
    import copy

    data = copy.deepcopy(raw)
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where, source)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"{source}: {where}: is a {type(node).__name__}, cannot set '{text}'")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, ".".join(parts), source)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"{source}: {'.'.join(parts[:-1])}: cannot set '{text}'")
    return data


def _list_index(part: str, node: list, where: str, source: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{source}: {where}: not an index of a list of {len(node)} items")
    return int(part)


def load_experiment(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    preset_table: Optional[typing.Mapping[str, typing.Callable[[], Any]]] = None,
) -> Experiment:
    """Read, override and validate an experiment YAML file (a local path)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        hint = ""
        candidate = Path("experiments") / f"{path.stem}.yaml"
        if not path.suffix and candidate.is_file():
            hint = f" (did you mean {candidate}?)"
        raise ConfigError(f"{source}: experiment file not found{hint}")
    raw = parse_yaml(path.read_text(), source)
    return build_experiment(raw, source, overrides, preset_table)


def model_presets() -> typing.Mapping[str, typing.Callable[[], Any]]:
    """Preset name -> factory of the model's frozen config dataclass."""
    from models import presets  # deferred: pulls in torch

    return presets.PRESETS


def build_experiment(
    raw: Any,
    source: str,
    overrides: list[str] | tuple[str, ...] = (),
    preset_table: Optional[typing.Mapping[str, typing.Callable[[], Any]]] = None,
) -> Experiment:
    """Validate a raw experiment mapping. `preset_table` defaults to `models.presets.PRESETS`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    notes: list[str] = []
    if overrides:
        source = f"{source} (with overrides {' '.join(map(redact_override, overrides))})"
        original = raw
        raw = apply_overrides(raw, list(overrides), source)
        notes += _scale_schedule(original, raw, overrides)
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: {key}: unknown key{_suggest(key, list(_TOP_LEVEL_KEYS))}")

    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{source}: name: required, letters/digits/_.- only (got {name!r})")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description: expected a string")

    model_raw = raw.get("model")
    if not isinstance(model_raw, dict) or "preset" not in model_raw:
        raise ConfigError(f"{source}: model.preset: required (a preset name from models.presets)")
    model_raw = dict(model_raw)
    preset_name = model_raw.pop("preset")
    table = preset_table if preset_table is not None else model_presets()
    if not isinstance(preset_name, str) or preset_name not in table:
        raise ConfigError(f"{source}: model.preset: unknown preset {preset_name!r}{_suggest(preset_name, sorted(table))}")
    model = update_dataclass(table[preset_name](), model_raw, "model", source)

    platform_raw = {k: v for k, v in raw.items() if k in PlatformConfig.model_fields}
    try:
        platform = PlatformConfig.model_validate(_lists_to_tuples(platform_raw))
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return Experiment(name, description, preset_name, model, platform, source, tuple(notes))


def _scale_schedule(original: dict[str, Any], raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> list[str]:
    """A run made shorter or longer with only `train.schedule.max_iter=N` keeps its learning-rate
    schedule's shape: the decay `steps` are scaled by N / the file's max_iter (in `raw`, in place).
    Returns a note saying so. Setting `train.schedule.steps` (or the whole schedule) turns this off."""
    keys = [parse_override(text)[0] for text in overrides]
    if ["train", "schedule", "max_iter"] not in keys or any(k[:3] == ["train", "schedule", "steps"] or
                                                            k in (["train"], ["train", "schedule"]) for k in keys):
        return []
    defaults = ScheduleConfig()
    file_schedule = ((original.get("train") or {}).get("schedule") or {}) if isinstance(original.get("train"), dict) else {}
    old_max = file_schedule.get("max_iter", defaults.max_iter)
    steps = file_schedule.get("steps", list(defaults.steps))
    schedule = raw["train"]["schedule"]
    new_max = schedule.get("max_iter")
    if not (isinstance(old_max, int) and isinstance(new_max, int) and old_max > 0 and new_max > 0
            and isinstance(steps, list) and all(isinstance(v, int) for v in steps)) or new_max == old_max:
        return []
    scaled = [max(1, min(new_max, round(v * new_max / old_max))) for v in steps]
    schedule["steps"] = scaled
    return [f"train.schedule.max_iter {old_max} -> {new_max}: learning-rate decay steps scaled with it, "
            f"{steps} -> {scaled} (set train.schedule.steps to choose them)"]


def _lists_to_tuples(value: Any) -> Any:
    # YAML gives lists; the schema uses tuples (immutable, hashable). Strict mode would refuse lists.
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _format_validation_error(exc: pydantic.ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(PlatformConfig, err["loc"][:-1])
            names = list(parent.model_fields) if parent else []
            msg = f"unknown key{_suggest(err['loc'][-1], names)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif is_secret_key(dotted):
            msg = f"{msg} (value not shown: a secret)"
        else:
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{source}: {dotted}: {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> Optional[type[BaseModel]]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def list_experiments(directory: str | Path = "experiments") -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))
