"""The published CTVIS model zoo, read from ``experiments/zoo/published.yaml`` (the figures are data,
not code). Each row names its experiment YAML in ``experiments/``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
ZOO_FILE = EXPERIMENTS_DIR / "zoo" / "published.yaml"
METRIC_ORDER = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_S", "AP_L")


class ZooError(ValueError):
    """A zoo row or import that cannot be used; the message names the row and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZooRow(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    backbone: str
    benchmark: str
    queries: int = Field(gt=0)
    experiment: str  # file name under experiments/
    weights_url: str
    submission_url: Optional[str] = None
    same_weights_as: Optional[str] = None
    metrics: dict[str, float]
    checkpoint_metrics: Optional[dict[str, float]] = None

    @property
    def experiment_path(self) -> Path:
        return EXPERIMENTS_DIR / self.experiment

    def metrics_text(self) -> str:
        return " / ".join(f"{key} {self.metrics[key]:.1f}" for key in METRIC_ORDER if key in self.metrics)


class Zoo(_Strict):
    source: str
    weights_folder: str
    rows: tuple[ZooRow, ...]

    def row(self, name: str) -> ZooRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise ZooError(f"no zoo row '{name}'; rows: {', '.join(r.name for r in self.rows)}")


def load_zoo(path: Path = ZOO_FILE) -> Zoo:
    try:
        return Zoo.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise ZooError(f"{path}: {error}") from None
