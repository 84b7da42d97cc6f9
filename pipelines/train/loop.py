"""`train_worker`: what every Ray Train worker runs.

One step (0-based index s; the run counts *completed* steps, 1..max_iter):
1. the rank's next b = B/W clips (`pipelines.train.data`), waiting time measured;
2. RNG seeded from (seed, s, rank): torch's global generator and the `generator` handed to the
   model (point sampling), so a step's randomness depends on nothing that came before it;
3. ``num_masks`` = ground-truth instances of the whole step (all ranks) / W, at least 1, as
   Mask2Former normalises its mask losses;
4. forward under autocast (GPU with `train.amp`), the sum of the weighted loss terms, backward
   through the AMP scaler, full-model gradient clipping on unscaled gradients, AdamW step,
   scheduler step;
5. the loss terms averaged over ranks (one all-reduce) and, on rank 0, logged to MLflow with the
   learning rates, gradient norm, throughput (clips/s over all workers) and data wait;
6. every `eval_period` steps and at the end, rank 0 validates (official metrics, x100);
7. every `checkpoint_period` steps and at the end, every rank calls `ray.train.report` (a barrier)
   and rank 0 attaches the checkpoint (`pipelines.train.state.TrainState`).
At the end rank 0 logs the final results JSON, overlay strips of validation videos and the model, an
MLflow pyfunc around the weights (``model/artifacts/model.pt``, registered by the driver).

Resuming (after a worker failure, or a resubmitted driver): `ray.train.get_checkpoint()` gives the
last checkpoint; model, optimizer, scheduler, scaler and step come back from it and the data stream
continues at the checkpoint's position, so the resumed run is the same run.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipelines import storage
from pipelines.train import optim, state
from pipelines.weights import WEIGHTS_FORMAT, load_weights

LOSS_FAMILIES = ("loss_ce", "loss_mask", "loss_dice")


class InjectedFault(RuntimeError):
    """Raised by the fault-injection knob (`train.fault_at_step`)."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (seed, step, rank)."""
    digest = hashlib.blake2b(f"ctvis/{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def loss_summary(terms: dict[str, float]) -> dict[str, float]:
    """Per-family sums over the decoder layers (``loss_ce`` + ``loss_ce_0`` + ...) and the total."""
    out = {}
    for family in LOSS_FAMILIES:
        members = [v for k, v in terms.items()
                   if k == family or (k.startswith(family + "_") and k[len(family) + 1:].isdigit())]
        if members:
            out[f"{family}_all_layers"] = float(sum(members))
    out["loss_total"] = float(sum(terms.values()))
    return out


def _all_reduce_mean(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1 and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= world_size
    return values


def _global_num_masks(batch: Any, world_size: int, device: torch.device) -> float:
    """Ground-truth instances of the step over all ranks / world size (>= 1), as Mask2Former."""
    local = (batch.gt_classes >= 0).sum().to(device=device, dtype=torch.float32).reshape(1)
    return max(float(_all_reduce_mean(local, world_size).item()), 1.0)


def _maybe_inject_fault(config: dict, step: int, rank: int, world_size: int) -> None:
    fault_step = config["experiment"].train.fault_at_step
    if fault_step is None or step != fault_step or rank != world_size - 1:
        return
    marker = state.fault_marker_uri(config["runs_root"], config["run_name"], step)
    if storage.exists(marker):
        return  # this run already failed here once
    storage.write_json(marker, {"step": step, "rank": rank, "time": time.time()})
    raise InjectedFault(f"train.fault_at_step={step}: worker {rank} fails on purpose (once per run)")


def _configure_ray_data(experiment: Any) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    cap = experiment.compute.data_cpu_limit
    if cap is not None:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=cap)


def train_worker(config: dict) -> None:
    """The Ray Train loop. `config`: experiment (pipelines.config.Experiment), run_name, runs_root,
    tracking_uri, mlflow_run_id, experiment_name (MLflow)."""
    import ray.train
    import ray.train.torch

    from models.model import build_model
    from pipelines.mlflow_runs import MlflowRun
    from pipelines.train import data as train_data
    from pipelines.train import validation

    experiment = config["experiment"]
    train_cfg = experiment.train
    schedule = train_cfg.schedule
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if train_cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size {train_cfg.batch_size} must be a multiple of compute.num_workers {world_size}")
    per_rank = train_cfg.batch_size // world_size
    _configure_ray_data(experiment)

    # The driver created the run. Metrics and tags are queued and sent by a background thread: a
    # tracking server that goes away delays them, never a training step (pipelines.mlflow_runs).
    mlflow_run = MlflowRun(config["tracking_uri"], enabled=rank == 0, queued=True)
    mlflow_run.attach(config["mlflow_run_id"])
    outage_wait_s = experiment.tracking.outage_wait_s

    torch.manual_seed(train_cfg.seed)  # identical initial weights on every rank
    model = build_model(experiment.model).to(device)
    optimizer = optim.build_optimizer(model, train_cfg.optimizer)
    scheduler = optim.build_scheduler(optimizer, schedule)
    use_amp = bool(train_cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resumed = state.TrainState.load(directory)
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        scaler.load_state_dict(resumed.scaler)
        torch.set_rng_state(resumed.rng_cpu)
        start_step = resumed.step
        if resumed.data_position != start_step * train_cfg.batch_size:
            raise ValueError(f"checkpoint at step {start_step}: data position {resumed.data_position} does not match "
                             f"batch size {train_cfg.batch_size}; resume with the experiment's original batch size")
        if rank == 0:
            mlflow_run.set_tags({"resumed_from_step": start_step})
    elif config.get("init_weights") is not None:
        source = config["init_weights"]  # pinned and checked by the driver (pipelines.weights)
        report = load_weights(model, source)
        mlflow_run.when_reachable(lambda: mlflow_run.log_text(report, "init/load_report.txt"), "the weights' load report",
                                  outage_wait_s)
        mlflow_run.set_tags({"init_weights": storage.redact(source.uri),
                          **({"init_weights_version": source.registry_version} if source.registry_version else {})})

    network = model
    if world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    model.train()

    val_set = None
    if rank == 0 and experiment.data.val is not None:
        val_set = validation.load_validation_set(experiment.data.val, experiment.data, experiment.eval.max_videos)

    positions = train_data.rank_positions(start_step, schedule.max_iter - start_step, train_cfg.batch_size,
                                          world_size, rank)
    batches = train_data.iter_rank_batches(
        train_data.rank_clip_dataset(experiment.data, seed=train_cfg.seed, max_iter=schedule.max_iter,
                                     batch_size=train_cfg.batch_size, start_step=start_step, world_size=world_size,
                                     rank=rank, cpus_per_decoder=experiment.compute.cpus_per_decoder),
        per_rank, experiment.data.size_divisibility, positions)

    last_time = loop_start = last_progress = time.perf_counter()
    val_metrics: dict[str, float] = {}
    if rank == 0:  # the driver's progress lines and stall warnings read this (pipelines.train.job)
        state.write_progress(config["runs_root"], config["run_name"], {"step": start_step, "phase": "starting"})
    for step in range(start_step, schedule.max_iter):
        wait_start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError(f"rank {rank}: the clip stream ended before step {step}") from None
        data_wait = time.perf_counter() - wait_start
        _maybe_inject_fault(config, step, rank, world_size)

        seed = step_seed(train_cfg.seed, step, rank)
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        batch = batch.to(device)
        num_masks = _global_num_masks(batch, world_size, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            losses = network(batch, generator=generator, num_masks=num_masks)
        names = sorted(losses)
        total = sum(losses[k].float() for k in names)
        if not torch.isfinite(total):
            raise FloatingPointError(f"rank {rank} step {step}: non-finite loss "
                                     f"{ {k: float(losses[k]) for k in names} }")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        grad_norm = optim.clip_gradients(model.parameters(), train_cfg.clip_gradients)
        lrs = {f"lr/{group.get('name', i)}": group["lr"] for i, group in enumerate(optimizer.param_groups)}
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        completed = step + 1

        averaged = _all_reduce_mean(torch.stack([losses[k].detach().float() for k in names]), world_size).tolist()
        terms = dict(zip(names, averaged))
        summary = loss_summary(terms)
        now = time.perf_counter()
        step_time, last_time = now - last_time, now
        if completed % train_cfg.log_period == 0 or completed == schedule.max_iter or completed == start_step + 1:
            metrics = {**terms, **summary, **lrs, "train/clips_per_s": train_cfg.batch_size / max(step_time, 1e-9),
                       "train/data_wait_s": data_wait, "train/step_time_s": step_time, "train/num_masks": num_masks}
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            mlflow_run.log_metrics(metrics, step=completed)
            # The driver polls this every few seconds: on storage (S3), at most one write per period.
            if rank == 0 and (now - last_progress >= state.PROGRESS_PERIOD_S or completed == start_step + 1
                              or completed == schedule.max_iter):
                last_progress = now
                state.write_progress(config["runs_root"], config["run_name"], {
                    "step": completed, "loss": summary["loss_total"],
                    "clips_per_s": metrics["train/clips_per_s"],
                    "steps_per_s": (completed - start_step) / max(now - loop_start, 1e-9)})

        final = completed == schedule.max_iter
        validate_now = val_set is not None and (final or (train_cfg.eval_period and completed % train_cfg.eval_period == 0))
        outcome = None
        if validate_now:
            outcome = validation.validate(model, val_set, experiment.eval.benchmark, device)
            val_metrics = outcome.metrics
            mlflow_run.log_metrics(val_metrics, step=completed)

        if completed % train_cfg.checkpoint_period == 0 or final:
            report = {"step": completed, "loss": summary["loss_total"], **(val_metrics if rank == 0 else {})}
            if rank == 0:
                with tempfile.TemporaryDirectory() as directory:
                    state.TrainState(
                        step=completed,
                        data_position=completed * train_cfg.batch_size,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(),
                        rng_cpu=torch.get_rng_state(),
                        rng_cuda=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                        mlflow_run_id=config["mlflow_run_id"],
                        experiment_name=experiment.name,
                        config_hash=experiment.config_hash(),
                    ).save(directory, config_yaml=experiment.to_yaml())  # `ctvis predict CHECKPOINT_DIR` needs nothing else
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                     checkpoint_dir_name=f"checkpoint_step{completed:07d}")
            else:
                ray.train.report(report, checkpoint=None)
            val_metrics = {}

        if final and rank == 0:
            # After the last checkpoint is stored: a tracking outage now cannot lose the training.
            mlflow_run.when_reachable(lambda: _log_final_artifacts(mlflow_run, experiment, model, val_set, outcome),
                                      "the model and results", outage_wait_s)
    mlflow_run.close_queue(outage_wait_s)


def _log_final_artifacts(mlflow_run: Any, experiment: Any, model: torch.nn.Module, val_set: Any, outcome: Any) -> None:
    """Rank 0 at the end: the model as a pyfunc (weights, resolved config, classes; registered by the
    driver), results and overlays."""
    if not mlflow_run.enabled:
        return
    from pipelines.train import validation

    import json

    from pipelines.inference.online import model_categories
    from pipelines.zoo.pyfunc import save_pyfunc_model

    with tempfile.TemporaryDirectory() as directory:
        # The registered model is the same MLflow pyfunc as a zoo import (weights, resolved config,
        # class table), so `mlflow.pyfunc.load_model`, `ctvis infer` and `ctvis predict` all take it.
        files = Path(directory) / "files"
        files.mkdir()
        torch.save({"format": WEIGHTS_FORMAT, "model": model.state_dict()}, files / "model.pt")
        (files / "config.yaml").write_text(experiment.to_yaml())
        if val_set is not None:
            ids, names = val_set.category_ids, val_set.category_names
        else:
            ids, names = model_categories(experiment, None, experiment.model.network.num_classes)
        (files / "classes.json").write_text(json.dumps([{"id": i, "name": n} for i, n in zip(ids, names)]))
        save_pyfunc_model(Path(directory) / "model", files / "model.pt", files / "config.yaml", files / "classes.json")
        mlflow_run.log_artifact(Path(directory) / "model", "model")
    if outcome is None:
        return
    mlflow_run.log_dict(outcome.results, "results/val_results.json")
    mlflow_run.log_dict({k: v for k, v in outcome.metrics.items()}, "results/val_metrics.json")
    mlflow_run.log_text(outcome.table + "\n", "results/val_table.txt")
    for video in val_set.videos[: experiment.eval.visualize_videos]:
        png = validation.overlay_png(video, outcome.predictions[video.video_id], val_set)
        mlflow_run.log_bytes(png, f"visualizations/video_{video.video_id}.png")
