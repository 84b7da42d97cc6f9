"""Everything a training run checks on the driver before it creates an MLflow run or starts a worker.

A mistake that would make every worker fail (or wait forever) is found here, once, with a message
that names the key or file and what to change:

1. `resolve_paths`: every local path training reads (data shards, init weights, runs root, the
   MLflow store) becomes absolute, against the driver's working directory:
   the workers run elsewhere (another directory, another node). Under a `ray job submit` job the
   working directory is the job's temporary copy of the repository, so a relative ``runs_root`` or
   the default ``./mlruns`` store would be lost with it: an error.
2. `check_static`: batch divisibility, ingested shards for every split (one category table for
   training and validation), validation settings; `with_dataset_classes` then sets the network's
   number of classes from that table (a custom split needs no model key for it).
3. `check_cluster`: the workers and their clip decoders fit the cluster; local run storage on a
   multi-node cluster is flagged.
4. `check_init_weights`: the initial weights open safely and fit the model (registry URIs pinned).
5. `config_changes`: a resumed run must have the config it was started with.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from pipelines import storage
from pipelines.ray_runtime import ClusterInfo, check_training_fits, training_plan


class PreflightError(ValueError):
    """The run cannot start as configured; the message says why and what to change."""


def _is_local(uri: Optional[str]) -> bool:
    return bool(uri) and "://" not in uri


def _absolute(uri: Optional[str], base: str) -> Optional[str]:
    if not _is_local(uri):
        return uri
    return os.path.normpath(os.path.join(base, os.path.expanduser(uri)))


def resolve_paths(experiment: Any, base: Optional[str] = None, in_job: bool = False) -> Any:
    """The experiment with every local path absolute (against `base`, default the working directory)."""
    base = base or os.getcwd()
    source = experiment.source
    runs_root = experiment.storage.runs_root
    if in_job and _is_local(runs_root) and not os.path.isabs(os.path.expanduser(runs_root)):
        raise PreflightError(
            f"{source}: storage.runs_root={runs_root!r} is relative: under a Ray job it would land in the job's "
            f"temporary working directory, and stopping or resubmitting the job would lose the run (no resume). "
            f"Set storage.runs_root to shared storage, e.g. storage.runs_root=s3://<bucket>/ray-runs")
    tracking_uri = experiment.tracking.tracking_uri
    if in_job and not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise PreflightError(
            f"{source}: no MLflow tracking server: under a Ray job the default local store (./mlruns) would be "
            f"inside the job's temporary working directory and lost. Set MLFLOW_TRACKING_URI (the runtime env's "
            f"env_vars) or tracking.tracking_uri=http://<server>:5000")
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + _absolute(tracking_uri[len("sqlite:///"):], base)

    # Training reads the splits' shards only: `annotations`, `frames_root` and `datasets_root` are
    # what `ctvis data ingest` read, kept as written (resolved against a job's temporary directory,
    # they would differ at every submission and make a resumed run look reconfigured).
    def split(spec: Any) -> Any:
        if spec is None:
            return None
        return spec.model_copy(update={"shards": _absolute(spec.shards, base)})

    data = experiment.data.model_copy(update={
        "train": tuple(split(s) for s in experiment.data.train), "val": split(experiment.data.val)})
    init = experiment.train.init_weights
    train = experiment.train.model_copy(update={"init_weights": init if init and init.startswith("models:/")
                                                else _absolute(init, base)})
    platform = experiment.platform.model_copy(update={
        "data": data, "train": train,
        "storage": experiment.storage.model_copy(update={"runs_root": _absolute(runs_root, base)}),
        "tracking": experiment.tracking.model_copy(update={"tracking_uri": tracking_uri}),
    })
    return dataclasses.replace(experiment, platform=platform)


def check_static(experiment: Any) -> list[Any]:
    """What makes every worker fail, found without Ray: batch divisibility, shards, validation.
    Returns the training splits' manifests."""
    from pipelines.data.pipeline import load_train_manifests
    from pipelines.data.shards import MANIFEST_NAME, load_manifest

    workers = experiment.compute.num_workers
    if experiment.train.batch_size % workers:
        raise PreflightError(f"{experiment.source}: train.batch_size {experiment.train.batch_size} must be a multiple "
                             f"of compute.num_workers {workers} (the batch is counted in clips across all workers)")
    try:
        manifests = load_train_manifests(experiment.data.train)  # every training split needs ingested shards
    except (ValueError, FileNotFoundError, storage.StorageError) as error:
        raise PreflightError(str(error)) from None
    val = experiment.data.val
    if val is not None and not val.shards:
        raise PreflightError(f"{experiment.source}: data.val ({val.name}) has no `shards`: ingest it with `ctvis data "
                             "ingest` and set data.val.shards (or data.val=null to train without validation)")
    if val is not None:
        try:
            if not storage.exists(storage.join(val.shards, MANIFEST_NAME)):
                raise PreflightError(f"{experiment.source}: data.val.shards={storage.redact(val.shards)}: no ingested "
                                     "split there (manifest.json missing): run `ctvis data ingest` first")
            val_categories = load_manifest(val.shards).categories
        except (ValueError, storage.StorageError) as error:
            raise PreflightError(f"{experiment.source}: data.val.shards: {error}") from None
        if val_categories != manifests[0].categories:
            raise PreflightError(
                f"{experiment.source}: data.val ({val.name}) has another category table than data.train "
                f"({experiment.data.train[0].name}): {_category_summary(val_categories)} vs "
                f"{_category_summary(manifests[0].categories)}; the model's labels are the training split's, so "
                f"validate on a split of the same dataset")
    if val is not None and experiment.eval.benchmark not in ("ytvis", "ovis"):
        raise PreflightError(f"{experiment.source}: eval.benchmark {experiment.eval.benchmark!r}: validation during "
                             "training supports ytvis and ovis")


    return manifests


def _category_summary(categories: Any) -> str:
    names = ", ".join(f"{c.id}:{c.name}" for c in categories[:4])
    return f"{len(categories)} categories ({names}{', ...' if len(categories) > 4 else ''})"


def with_dataset_classes(experiment: Any, manifests: list[Any], log: Callable[[str], None]) -> Any:
    """The experiment with ``model.network.num_classes`` = the number of categories of the training
    data (the presets' value is only the default of their dataset), said in a log line when it
    changes. Everything sized by it (the class head, the criterion's no-object weight, the top-k
    of inference by default) follows from the model config."""
    num_classes = len(manifests[0].categories)
    network = experiment.model.network
    if network.num_classes == num_classes:
        return experiment
    log(f"model.network.num_classes {network.num_classes} -> {num_classes}: the category table of the training "
        f"data ({experiment.data.train[0].name}: {_category_summary(manifests[0].categories)})")
    model = dataclasses.replace(experiment.model, network=dataclasses.replace(network, num_classes=num_classes))
    return dataclasses.replace(experiment, model=model)


def check_cluster(experiment: Any, cluster: ClusterInfo, log: Callable[[str], None]) -> None:
    """Workers + decoders fit the cluster (an error where it cannot grow); local run storage on a
    multi-node cluster is only right on a shared filesystem."""
    check_training_fits(training_plan(experiment), cluster, experiment.source, log)
    if cluster.num_nodes > 1 and _is_local(experiment.storage.runs_root):
        log(f"warning: storage.runs_root={experiment.storage.runs_root} is a local path on a {cluster.num_nodes}-node "
            f"cluster: it must be a filesystem every node mounts at that path, or use s3://")


def check_init_weights(experiment: Any, tracking_uri: Optional[str], log: Callable[[str], None]):
    """The pinned `WeightsSource` of train.init_weights (None without one), opened and matched against
    the model on the driver."""
    uri = experiment.train.init_weights
    if not uri:
        return None
    from pipelines.weights import WeightsError, check_weights

    try:
        check = check_weights(uri, experiment.model, tracking_uri)
    except WeightsError as error:
        raise PreflightError(f"{experiment.source}: train.init_weights: {error}") from None
    log(f"initial weights: {check.summary()}")
    return check.source


def config_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """'key: old -> new' for every key whose value differs (added and removed keys included)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}")
    return changes
