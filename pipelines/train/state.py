"""What a training checkpoint holds, and the small files kept beside a run in storage.

A checkpoint directory (reported by rank 0 to Ray Train, which copies it to the run's storage path
and keeps the last K) holds:
- ``state.pt``: model (unwrapped, our parameter names), optimizer, scheduler and AMP-scaler state
  dicts, the number of completed steps, the torch RNG states and the data position (the next
  clip of the run's clip stream), saved with `torch.save` and read back with ``weights_only=True``;
- ``meta.json``: step, data position, MLflow run id, experiment name, config hash, wall time — readable
  without torch;
- ``config.yaml``: the resolved experiment (what `ctvis predict CHECKPOINT_DIR` builds the model from).

Beside the run (``<runs_root>/<run name>/``), the driver keeps ``ctvis_run.json`` with the MLflow run
id, written before any worker starts, so that a resubmitted driver (after its predecessor died)
reattaches to the same MLflow run; the id is in every checkpoint as well. Fault injection leaves
``fault_injected_step<N>.json`` there, so that an injected fault happens once per run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from pipelines import storage

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "ctvis_run.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class TrainState:
    """Everything needed to continue a run exactly where a checkpoint left it."""

    step: int  # optimizer steps completed
    data_position: int  # the next clip position of the run's clip stream (= step * batch_size)
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng_cpu: torch.Tensor
    rng_cuda: list[torch.Tensor]
    mlflow_run_id: Optional[str] = None
    experiment_name: str = ""
    config_hash: str = ""

    def save(self, directory: str | Path, config_yaml: Optional[str] = None) -> Path:
        """Write the checkpoint; ``meta.json`` last, listing every file with its size, so that a copy
        cut short (a killed upload) is told from a whole one (`pipelines.weights.check_checkpoint_complete`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "data_position": self.data_position,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "rng_cpu": self.rng_cpu,
            "rng_cuda": list(self.rng_cuda),
        }
        torch.save(payload, directory / STATE_FILE)
        if config_yaml is not None:
            (directory / CONFIG_FILE).write_text(config_yaml)
        meta = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "data_position": self.data_position,
            "mlflow_run_id": self.mlflow_run_id,
            "experiment_name": self.experiment_name,
            "config_hash": self.config_hash,
            "saved_at": time.time(),
            "files": {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.name != META_FILE},
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TrainState":
        directory = Path(directory)
        state_path, meta_path = directory / STATE_FILE, directory / META_FILE
        if not state_path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: not a CTVIS training checkpoint (needs {STATE_FILE} and {META_FILE})")
        from pipelines.weights import check_checkpoint_complete

        check_checkpoint_complete(str(directory))
        meta = json.loads(meta_path.read_text())
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{state_path}: format_version {payload.get('format_version')!r}, expected {FORMAT_VERSION}")
        return cls(
            step=int(payload["step"]),
            data_position=int(payload["data_position"]),
            model=payload["model"],
            optimizer=payload["optimizer"],
            scheduler=payload["scheduler"],
            scaler=payload["scaler"],
            rng_cpu=payload["rng_cpu"],
            rng_cuda=list(payload["rng_cuda"]),
            mlflow_run_id=meta.get("mlflow_run_id"),
            experiment_name=meta.get("experiment_name", ""),
            config_hash=meta.get("config_hash", ""),
        )


def run_dir(runs_root: str, run_name: str) -> str:
    """The run's directory URI: where Ray Train keeps its snapshot and checkpoints."""
    return storage.join(runs_root, run_name)


def read_run_info(runs_root: str, run_name: str) -> Optional[dict[str, Any]]:
    """The driver's ``ctvis_run.json`` of a run (None for a new run)."""
    try:
        return storage.read_json(storage.join(run_dir(runs_root, run_name), RUN_INFO_FILE))
    except storage.StorageNotFound:
        return None


def write_run_info(runs_root: str, run_name: str, info: dict[str, Any]) -> None:
    storage.write_json(storage.join(run_dir(runs_root, run_name), RUN_INFO_FILE), info, indent=2)


def fault_marker_uri(runs_root: str, run_name: str, step: int) -> str:
    return storage.join(run_dir(runs_root, run_name), f"fault_injected_step{step}.json")


PROGRESS_FILE = "progress.json"
PROGRESS_PERIOD_S = 5.0  # rank 0 writes its progress at most this often (and at the first and last step)


def write_progress(runs_root: str, run_name: str, progress: dict[str, Any]) -> None:
    """Rank 0's latest step (and loss, throughput) beside the run, for the driver's progress lines
    and stall warnings."""
    storage.write_json(storage.join(run_dir(runs_root, run_name), PROGRESS_FILE), {**progress, "time": time.time()})


def read_progress(runs_root: str, run_name: str) -> Optional[dict[str, Any]]:
    try:
        return storage.read_json(storage.join(run_dir(runs_root, run_name), PROGRESS_FILE))
    except storage.StorageNotFound:
        return None
