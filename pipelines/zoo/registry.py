"""Zoo rows in the MLflow registry: import a row's official weights as a registered pyfunc model, and
look rows up.

An import reads the official ``.pth`` safely (``torch.load(weights_only=True)``), converts it with
the checkpoint converter into the row's model (its experiment YAML) and refuses an incomplete load
(missing, unexpected or shape-skipped keys) unless ``allow_partial``. The registered version holds
the pyfunc model directory (`pyfunc.save_pyfunc_model`: ``model.pt`` in our format, the resolved
``config.yaml``, ``classes.json``), is tagged with the row (backbone, benchmark, queries, the
published figures, the file's sha256) and gets the alias ``published``; the registered model's
description states the published figures. The same file again (same sha256) is a no-op; another
file becomes a new version (and takes the alias).

Models trained here are registered with the same tag names (`zoo_tags`), so both compare side by
side in the MLflow UI.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from pipelines import storage
from pipelines.zoo.rows import ZooError, ZooRow

ZOO_EXPERIMENT = "ctvis-zoo"
PUBLISHED_ALIAS = "published"
SHA_TAG = "weights_sha256"


def zoo_tags(backbone: str, benchmark: str, queries: int, metrics: dict[str, float], origin: str) -> dict[str, str]:
    """The tags every registered CTVIS version carries (zoo imports and models trained here)."""
    tags = {"backbone": backbone, "benchmark": benchmark, "queries": str(queries), "origin": origin}
    tags.update({key: f"{value:.1f}" for key, value in metrics.items()})
    return tags


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class ImportResult:
    version: Any  # pipelines.mlflow_runs.RegisteredVersion
    created: bool  # False: the same file was registered already (a no-op)
    load_report: str


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registered_versions(tracking_uri: str, name: str) -> list:
    """The versions of registered model `name` (newest first); [] when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return sorted(_client(tracking_uri).search_model_versions(f"name = '{name}'"),
                      key=lambda v: int(v.version), reverse=True)
    except MlflowException:
        return []


def _class_table(experiment: Any) -> list[dict]:
    from pipelines.data.catalog import contiguous_index, split_categories

    spec = experiment.data.val or experiment.data.train[0]
    categories = split_categories(spec.name) or split_categories(experiment.data.train[0].name)
    if categories is None:
        raise ZooError(f"{experiment.source}: the split {spec.name} is not in the catalog: no class names")
    order = contiguous_index(categories)
    return [{"id": c.id, "name": c.name} for c in sorted(categories, key=lambda c: order[c.id])]


def import_row(row: ZooRow, weights_uri: str, tracking_uri: Optional[str] = None, allow_partial: bool = False,
               log: Callable[[str], None] = print) -> ImportResult:
    """Register `weights_uri` (an official CTVIS ``.pth``, local or ``s3://``) as row `row` (see the
    module notes)."""
    import torch

    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.mlflow_runs import MlflowRun, get_model_version, resolve_tracking_uri
    from pipelines.weights import WEIGHTS_FORMAT, fetch, read_weights, resolve_weights
    from pipelines.zoo.pyfunc import save_pyfunc_model

    tracking_uri = resolve_tracking_uri(tracking_uri)
    name = storage.redact(weights_uri)
    source = resolve_weights(weights_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = fetch(source, tmp)
        sha = file_sha256(local)
        for version in registered_versions(tracking_uri, row.name):
            if (version.tags or {}).get(SHA_TAG) == sha:
                log(f"{row.name}: {name} (sha256 {sha[:12]}) is already version {version.version}: nothing to do")
                return ImportResult(get_model_version(row.name, version=version.version, tracking_uri=tracking_uri),
                                    False, "")
        experiment = load_experiment(row.experiment_path)
        weights = read_weights(local, name)
        if weights.kind != "official":
            raise ZooError(f"{row.name}: {name} is not an official CTVIS checkpoint (detectron2 key names); models "
                           f"trained here are registered by ctvis train")
        model = build_model(experiment.model)
        report = model.load_official_checkpoint(weights.tensors)
        report.source = name
        summary = report.summary()
        if not report.complete and not allow_partial:
            raise ZooError(f"{row.name}: {name} does not fill the {row.backbone} model of {row.experiment} "
                           f"completely (--allow-partial registers it anyway):\n{summary}")
        log(summary.splitlines()[0])
        files = Path(tmp) / "files"
        files.mkdir()
        torch.save({"format": WEIGHTS_FORMAT, "model": model.state_dict()}, files / "model.pt")
        del model, weights
        (files / "config.yaml").write_text(experiment.to_yaml())
        (files / "classes.json").write_text(json.dumps(_class_table(experiment)))
        save_pyfunc_model(Path(tmp) / "model", files / "model.pt", files / "config.yaml", files / "classes.json")

        tags = zoo_tags(row.backbone, row.benchmark, row.queries, row.metrics, "published")
        tags.update({SHA_TAG: sha, "weights_source": name, "complete_load": str(report.complete).lower()})
        run = MlflowRun(tracking_uri)
        run.start(ZOO_EXPERIMENT, run_name=f"import {row.name}", tags={"zoo_row": row.name})
        try:
            run.log_params({"row": row.name, "experiment": row.experiment, "weights_source": name,
                            "weights_sha256": sha, "weights_url": row.weights_url})
            run.log_text(summary + "\n", "load_report.txt")
            run.log_artifact(Path(tmp) / "model", "model")
            description = (f"CTVIS {row.backbone} ({row.queries} queries) on {row.benchmark}, published: "
                           f"{row.metrics_text()}. Official weights {row.weights_url}; experiment "
                           f"experiments/{row.experiment}.")
            version = run.register_model(row.name, "model", description=f"{description} sha256 {sha}.", tags=tags,
                                         aliases=[PUBLISHED_ALIAS])
            client = _client(tracking_uri)
            client.update_registered_model(row.name, description=description)
            for key, value in zoo_tags(row.backbone, row.benchmark, row.queries, row.metrics, "published").items():
                client.set_registered_model_tag(row.name, key, value)
        except BaseException:
            run.end("FAILED")
            raise
        run.end()
    log(f"{row.name}: registered version {version.version} (alias {PUBLISHED_ALIAS}) from {name}")
    return ImportResult(version, True, summary)


def published_version(tracking_uri: str, name: str) -> Optional[str]:
    """The version the alias ``published`` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, PUBLISHED_ALIAS).version)
    except MlflowException:
        return None
