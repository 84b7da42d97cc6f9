"""The sweep YAML: plain data, validated as strictly as an experiment (an unknown key is an error
naming it).

    name: ctcl_tiny
    kind: training                      # or tracker
    base: ../tiny.yaml                  # the experiment every trial starts from (relative to this file)
    overrides: [train.schedule.max_iter=6]          # fixed for every trial
    search_space:                       # dotted config keys -> one domain each
      model.ctcl.reid_weight: {loguniform: [0.5, 4.0]}
      model.ctcl.num_negatives: {choice: [4, 8]}
      model.tracker.match_score_thr: {grid: [0.2, 0.3, 0.4]}
      model.tracker.num_dead_frames: {randint: [5, 30]}     # [low, high)
      model.criterion.dice_weight: {uniform: [3.0, 7.0]}
    metric: val/AP                      # default: val/AP (training), AP (tracker); x100
    mode: max
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none}
    num_samples: 4                      # samples of the search space (each grid point num_samples times)
    max_concurrent_trials: 2
    include_base: false                 # also run the base settings as a trial
    seed: 0
    trial_resources: {cpus: 1}          # tracker sweeps: per trial (training trials use the base's compute.*)
    cache: s3://bucket/cache/tiny-val   # tracker sweeps: the output cache of ctvis predict --cache-outputs
    split: s3://bucket/shards/val       # tracker sweeps: the annotated split the cache was made from
    benchmark: ytvis                    # tracker sweeps: the metrics protocol (ytvis, ovis)
    storage_root: s3://bucket/sweeps    # where Tune keeps the sweep's state (default ./sweeps)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.config import (ConfigError, _format_validation_error, _lists_to_tuples, _suggest, apply_overrides,
                              parse_yaml)

# Keys a tracker sweep may search: what runs after the network.
TRACKER_KEY_PREFIXES = ("model.tracker.", "model.inference.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Scalar = Union[bool, int, float, str]


class Domain(_Strict):
    """One key's values: exactly one of choice / grid (lists), uniform / loguniform (float [low,
    high]), randint (int [low, high))."""

    choice: Optional[tuple[Scalar, ...]] = None
    grid: Optional[tuple[Scalar, ...]] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Domain":
        given = [name for name in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, grid, uniform, loguniform, randint (got {given or 'none'})")
        kind = given[0]
        values = getattr(self, kind)
        if kind in ("choice", "grid") and not values:
            raise ValueError(f"{kind}: needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{kind}: needs low < high, got {list(values)}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform: needs low > 0, got {values[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, name) is not None)

    def to_tune(self) -> Any:
        from ray import tune

        kind = self.kind
        if kind == "choice":
            return tune.choice(list(self.choice))
        if kind == "grid":
            return tune.grid_search(list(self.grid))
        if kind == "uniform":
            return tune.uniform(*self.uniform)
        if kind == "loguniform":
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


class Scheduler(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=1, ge=1, description="reports (validations) before a trial can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1)


class TrialResources(_Strict):
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    kind: Literal["training", "tracker"]
    base: Optional[str] = Field(default=None, description="the base experiment YAML (training sweeps)")
    overrides: tuple[str, ...] = ()
    search_space: dict[str, Domain]
    metric: Optional[str] = None
    mode: Literal["max", "min"] = "max"
    scheduler: Scheduler = Scheduler()
    num_samples: int = Field(default=1, ge=1)
    max_concurrent_trials: int = Field(default=1, ge=1)
    max_failures: int = Field(default=1, ge=0, description="retries of a failing trial")
    include_base: bool = False
    seed: int = 0
    trial_resources: TrialResources = TrialResources()
    cache: Optional[str] = None
    split: Optional[str] = None
    benchmark: Literal["ytvis", "ovis", "ytvis2022"] = "ytvis"  # tracker sweeps: the metrics protocol
    storage_root: str = Field(default="sweeps", description="URI where Tune keeps the sweep's state")

    @property
    def resolved_metric(self) -> str:
        return self.metric or ("val/AP" if self.kind == "training" else "AP")


def _sample_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def trial_overrides(search: dict[str, Any]) -> list[str]:
    """Sampled values -> experiment overrides (`key=value`, JSON values)."""
    return [_sample_override(key, value) for key, value in search.items()]


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[SweepConfig, Path]:
    """Read, override and validate a sweep YAML; returns it and its directory (what `base` is relative to).
    Every searched key is checked against the base experiment (or the cache's for tracker sweeps)
    when the sweep runs (`check_keys`)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: sweep file not found")
    raw = parse_yaml(path.read_text(), source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sweep keys")
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
        raw = apply_overrides(raw, list(overrides), source)
    try:
        sweep = SweepConfig.model_validate(_lists_to_tuples(raw))
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_sweep_error(exc, source)) from None
    if sweep.kind == "training" and not sweep.base:
        raise ConfigError(f"{source}: base: a training sweep needs the base experiment YAML")
    if sweep.kind == "tracker":
        missing = [key for key in ("cache", "split") if getattr(sweep, key) is None]
        if missing:
            raise ConfigError(f"{source}: {', '.join(missing)}: a tracker sweep needs the output cache (ctvis predict "
                              f"--cache-outputs) and the annotated split it was made from")
        for key in sweep.search_space:
            if not key.startswith(TRACKER_KEY_PREFIXES):
                raise ConfigError(f"{source}: search_space.{key}: a tracker sweep can only search what runs after the "
                                  f"network ({', '.join(p + '*' for p in TRACKER_KEY_PREFIXES)})")
    if not sweep.search_space:
        raise ConfigError(f"{source}: search_space: empty")
    # Local paths are the command's working directory's: Tune runs trials in other directories.
    absolute = {key: os.path.abspath(getattr(sweep, key)) for key in ("cache", "split", "storage_root")
                if getattr(sweep, key) and "://" not in getattr(sweep, key)}
    return sweep.model_copy(update=absolute), path.parent


def check_keys(sweep: SweepConfig, build: Any, source: str) -> None:
    """Every searched key, at each end of its domain, builds a valid experiment (`build(overrides)`
    raises ConfigError naming the key otherwise)."""
    for key, domain in sweep.search_space.items():
        values = getattr(domain, domain.kind)
        for value in (values[0], values[-1]):
            if domain.kind == "randint":
                value = value if value == values[0] else values[1] - 1
            try:
                build(list(sweep.overrides) + [_sample_override(key, value)])
            except ConfigError as error:
                raise ConfigError(f"{source}: search_space.{key} ({domain.kind} value {value!r}): {error}") from None


def _format_sweep_error(exc: pydantic.ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = SweepConfig if len(err["loc"]) == 1 else None
            names = list(parent.model_fields) if parent else []
            lines.append(f"{source}: {dotted}: unknown key{_suggest(err['loc'][-1], names)}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {dotted}: required key is missing")
        else:
            lines.append(f"{source}: {dotted}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines) or _format_validation_error(exc, source)
