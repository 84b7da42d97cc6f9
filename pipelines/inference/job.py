"""`ctvis predict`: a model (or an output cache) over a whole split, as a Ray Data batch-inference job.

The driver plans and merges; the work happens in an actor pool (`PredictActor`, one model per actor,
on a GPU when asked): one Ray Data row per video. Each actor decodes its video from the split's
shards, runs the model (`predictor.VideoPredictor`; with ``--from-cache``, only the tracker and
post-processing, `predictor.replay_cached`) and writes that video's results entries to
``<output>/parts/<video id>.json`` itself (and its network outputs to the cache with
``--cache-outputs``); only a small status row comes back to the driver. So a split of any size
runs in bounded driver memory, and a killed job re-run with the same command skips the videos whose
part exists (``<output>/predict.json`` records what made the parts, so another model or split
cannot be mixed in).

At the end the parts are streamed, in the split's video order, into ``results.json`` (the official
format) and ``submission.zip`` (``results.json`` at the zip root: what the CodaLab servers of
YouTube-VIS 2019/2021/2022 and OVIS accept), the official metrics are computed when the split has
annotations (``metrics.json``, ``table.txt``), and an MLflow run records params, metrics (x100),
those files and overlay strips of the first videos.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zipfile
from typing import Any, Callable, Literal, Optional, Sequence

from pipelines import storage

PARTS_DIR = "parts"
RESULTS_FILE = "results.json"
ZIP_FILE = "submission.zip"
METRICS_FILE = "metrics.json"
TABLE_FILE = "table.txt"
JOB_FILE = "predict.json"


class PredictError(ValueError):
    """The job cannot run or did not finish as asked; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    output: str
    benchmark: Literal["ytvis", "ovis", "ytvis2022"] = "ytvis"
    cache_outputs: Optional[str] = None  # also store the network outputs here
    from_cache: Optional[str] = None  # re-run tracker + post-processing from this cache (no network)
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    on_error: Literal["fail", "skip"] = "fail"
    max_videos: Optional[int] = None
    overlays: int = 2  # overlay strips of the first videos, logged to MLflow
    ray_address: Optional[str] = None
    tracking_uri: Optional[str] = None
    run_name: Optional[str] = None


@dataclasses.dataclass
class PredictSummary:
    output: str
    split: str
    num_videos: int
    predicted: int  # videos this run worked on
    reused: int  # videos whose part an earlier run had written
    failed: list[dict]  # {"video_id", "frame", "error"} of skipped videos (--on-error skip)
    metrics: Optional[dict[str, float]]  # x100, None without annotations
    table: Optional[str]
    mlflow_run_id: Optional[str]
    tracking_uri: Optional[str]
    wall_s: float
    work_s: float  # the Ray Data part (videos of this run), actor start-up included
    video_s: float  # the actors' time on the videos themselves, summed

    @property
    def videos_per_s(self) -> float:
        return self.predicted / self.work_s if self.work_s > 0 else 0.0


def part_uri(output: str, video_id: int) -> str:
    return storage.join(output, PARTS_DIR, f"{int(video_id):012d}.json")


# -- the actor ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ActorSpec:
    """What a `PredictActor` needs (picklable; storage credentials come from the environment)."""

    experiment: Any  # pipelines.config.Experiment: model config and test sizes
    weights: Any  # pipelines.weights.WeightsSource, None with from_cache
    category_ids: tuple[int, ...]
    output: str
    cache_outputs: Optional[str]
    from_cache: Optional[str]
    use_gpu: bool
    threads: int


class PredictActor:
    """Ray Data callable class: rows of videos -> their parts written, one status row each."""

    def __init__(self, spec: ActorSpec):
        import torch

        from pipelines.data.shards import ShardReader
        from pipelines.inference.predictor import VideoPredictor

        self.spec = spec
        torch.set_num_threads(max(1, spec.threads))
        storage.configure_s3(storage.S3Options.from_config(spec.experiment.storage.s3))
        self.device = torch.device("cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu")
        self.predictor = None
        if spec.from_cache is None:
            from models.model import build_model
            from pipelines.weights import load_weights

            model = build_model(spec.experiment.model)
            load_weights(model, spec.weights)
            self.predictor = VideoPredictor(model.to(self.device).eval(), spec.category_ids, self.device)
        self.reader = ShardReader(columns=["video_id", "height", "width", "frames"])

    def _predict(self, ref: Any) -> int:
        from pipelines.inference import cache, predictor, videos

        spec = self.spec
        if self.predictor is None:
            cached = cache.read_cached_video(cache.video_cache_uri(spec.from_cache, ref.video_id))
            prediction = predictor.replay_cached(spec.experiment.model, cached, spec.category_ids, self.device)
        else:
            data = spec.experiment.data
            video = videos.read_test_video(self.reader, ref, data.min_size_test, data.max_size_test)
            recorder = cache.OutputRecorder() if spec.cache_outputs else None
            prediction = self.predictor.predict(video, recorder)
            if recorder is not None:
                height, width = video.frames.shape[-2:]
                padded = self.predictor.model.network.padded_size(height, width)
                storage.write_bytes(cache.video_cache_uri(spec.cache_outputs, ref.video_id),
                                    recorder.encode(ref.video_id, padded, (height, width), video.original_size))
        # The part is written last: its presence means the video is done (cache file included).
        storage.write_bytes(part_uri(spec.output, ref.video_id), json.dumps(prediction.results).encode())
        return len(prediction.results)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from pipelines.inference.videos import VideoDecodeError, VideoRef

        statuses: dict[str, list] = {"video_id": [], "entries": [], "frame": [], "error": [], "seconds": []}
        for index in range(len(batch["video_id"])):
            ref = VideoRef(int(batch["video_id"][index]), str(batch["shard_uri"][index]), int(batch["row"][index]),
                           int(batch["length"][index]))
            started = time.perf_counter()
            entries, frame, error = 0, -1, ""
            try:
                entries = self._predict(ref)
            except VideoDecodeError as failure:
                frame, error = failure.frame, str(failure)
            statuses["video_id"].append(ref.video_id)
            statuses["entries"].append(entries)
            statuses["frame"].append(frame)
            statuses["error"].append(error)
            statuses["seconds"].append(time.perf_counter() - started)
        return {key: np.asarray(values) for key, values in statuses.items()}


# -- the driver -----------------------------------------------------------------------------------
def _fingerprint(experiment: Any, weights_location: str, split: str, from_cache: Optional[str]) -> dict[str, str]:
    """What the parts under an output depend on (a re-run must match to reuse them)."""
    model = json.dumps(dataclasses.asdict(experiment.model), sort_keys=True, default=str)
    sizes = f"{experiment.data.min_size_test}/{experiment.data.max_size_test}"
    return {"model_config": hashlib.sha256(model.encode()).hexdigest()[:16], "weights": weights_location,
            "split": split, "test_size": sizes, "from_cache": from_cache or ""}


def _check_output(output: str, fingerprint: dict[str, str]) -> None:
    job_uri = storage.join(output, JOB_FILE)
    try:
        previous = storage.read_json(job_uri)
    except storage.StorageNotFound:
        storage.write_json(job_uri, fingerprint, indent=1)
        return
    changed = [key for key in fingerprint if previous.get(key) != fingerprint[key]]
    if changed:
        raise PredictError(
            f"{storage.redact(output)} holds the results of another job ({', '.join(changed)} differ: "
            + "; ".join(f"{k}: {previous.get(k)!r} -> {fingerprint[k]!r}" for k in changed)
            + "): choose another --output, or delete that one to start over")


def _done_videos(output: str) -> set[int]:
    try:
        names = storage.ls(storage.join(output, PARTS_DIR))
    except storage.StorageNotFound:
        return set()
    done = set()
    for name in names:
        stem = name.rsplit("/", 1)[-1]
        if stem.endswith(".json") and stem[:-5].isdigit():
            done.add(int(stem[:-5]))
    return done


def merge_parts(output: str, video_ids: Sequence[int], done: set[int]) -> int:
    """Stream the parts, in the split's order, into results.json and submission.zip; returns the
    number of entries."""
    entries = 0
    with storage.open_uri(storage.join(output, RESULTS_FILE), "wb") as results, \
            storage.open_uri(storage.join(output, ZIP_FILE), "wb") as zipped:
        entry = zipfile.ZipInfo(RESULTS_FILE, date_time=time.localtime()[:6])
        entry.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
                archive.open(entry, "w", force_zip64=True) as member:
            def write(chunk: bytes) -> None:
                results.write(chunk)
                member.write(chunk)

            write(b"[")
            first = True
            for video_id in video_ids:
                if video_id not in done:
                    continue
                body = storage.read_bytes(part_uri(output, video_id)).strip()
                if not (body.startswith(b"[") and body.endswith(b"]")):
                    raise PredictError(f"{storage.redact(part_uri(output, video_id))}: not a results part (a JSON "
                                       f"list); delete it and run again")
                inner = body[1:-1].strip()
                if inner:
                    write(inner if first else b"," + inner)
                    first = False
                    entries += len(json.loads(body))
            write(b"]")
    return entries


def _evaluate(output: str, manifest: Any, video_ids: Sequence[int], benchmark: str) -> tuple[dict, Any, str]:
    """Official metrics of results.json on the split's own annotations (all `video_ids`, failed ones
    included: a video without results counts as missed, as on the benchmark servers)."""
    from pipelines.data.shards import export_ytvis_json
    from pipelines.evaluation.command import _evaluation_json, _format_table
    from pipelines.evaluation.data import load_ground_truth, load_predictions
    from pipelines.evaluation.suites import run_evaluation

    ground_truth = export_ytvis_json(manifest)
    keep = set(video_ids)
    ground_truth["videos"] = [v for v in ground_truth["videos"] if v["id"] in keep]
    ground_truth["annotations"] = [a for a in ground_truth["annotations"] if a["video_id"] in keep]
    # The YouTube-VIS 2022 long videos are scored on the server; on a split's own annotations the
    # ytvis protocol applies.
    protocol = "ovis" if benchmark == "ovis" else "ytvis"
    results_uri = storage.join(output, RESULTS_FILE)
    report = run_evaluation(protocol, load_predictions(storage.read_bytes(results_uri), name=results_uri),
                            gt=load_ground_truth(ground_truth, name=f"{manifest.split} annotations"))
    evaluation = report.main
    metrics = {name: 100.0 * value if value >= 0 else value for name, value in evaluation.stats_by_name.items()}
    table = _format_table(f"{protocol} on {manifest.split} ({len(video_ids)} videos)", evaluation.stat_names,
                          evaluation.stats)
    return metrics, {**_evaluation_json(evaluation), "warnings": report.warnings}, table


def predict_split(model: Any, split: str, options: PredictOptions, log: Callable[[str], None] = print,
                  worker_env: Optional[dict[str, str]] = None) -> PredictSummary:
    """Run `model` (a `model_source.ResolvedModel`; with ``options.from_cache``, the one
    `model_source.model_from_cache` gives) over the ingested split at `split` (its shards directory).
    See the module notes."""
    from pipelines.data.catalog import contiguous_index
    from pipelines.data.shards import load_manifest
    from pipelines.inference import cache
    from pipelines.inference.videos import video_refs
    from pipelines.ray_runtime import runtime_env_vars

    runtime_env_vars(worker_env)  # secrets refused before anything starts
    started = time.time()
    if options.from_cache and options.cache_outputs:
        raise PredictError("--cache-outputs and --from-cache together: a re-run from a cache writes no cache")
    if options.workers < 1:
        raise PredictError(f"--workers must be >= 1, got {options.workers}")
    try:
        manifest = load_manifest(split)
    except (FileNotFoundError, ValueError) as error:
        raise PredictError(str(error)) from None
    if manifest.kind != "video":
        raise PredictError(f"{storage.redact(split)}: holds images (a COCO split), not videos")
    experiment, weights_location, description = model.experiment, model.weights.location, model.description
    if options.from_cache:
        info = cache.read_cache_manifest(options.from_cache)
        if info.get("split_fingerprint") != split_fingerprint(manifest):
            raise PredictError(f"{storage.redact(options.from_cache)} was made from another split "
                               f"({info.get('split')}), not {storage.redact(split)}")
    num_classes = experiment.model.network.num_classes
    if num_classes != len(manifest.categories):
        raise PredictError(
            f"{description}: the model predicts {num_classes} classes but the split {manifest.split} "
            f"({storage.redact(split)}) has {len(manifest.categories)} categories: a model of another dataset "
            f"(YouTube-VIS 2019/2021: 40, OVIS: 25)?")
    if options.benchmark == "ovis" and len(manifest.categories) != 25 or \
            options.benchmark in ("ytvis", "ytvis2022") and len(manifest.categories) == 25:
        log(f"warning: --benchmark {options.benchmark} on a split with {len(manifest.categories)} categories")
    index = contiguous_index(manifest.categories)
    category_ids = tuple(cid for cid, _ in sorted(index.items(), key=lambda item: item[1]))

    refs = video_refs(manifest, options.max_videos)
    video_ids = [ref.video_id for ref in refs]
    _check_output(options.output, _fingerprint(experiment, weights_location, split, options.from_cache))
    if options.cache_outputs:
        cache.write_cache_manifest(options.cache_outputs, {
            "experiment": experiment.to_yaml(), "weights": weights_location, "model": description,
            "split": storage.redact(split), "split_fingerprint": split_fingerprint(manifest),
            "mask_dtype": "float16"})
    done = _done_videos(options.output) & set(video_ids)
    todo = [ref for ref in refs if ref.video_id not in done]
    log(f"predict: {len(refs)} videos of {manifest.split}, {len(done)} already done, {len(todo)} to run "
        f"({'tracker + post-processing from ' + storage.redact(options.from_cache) if options.from_cache else description})")

    failed: list[dict] = []
    work_s = video_s = 0.0
    if todo:
        failed, work_s, video_s = _run_actors(experiment, model, todo, category_ids, options, log, worker_env)
        if failed and options.on_error == "fail":
            first = failed[0]
            raise PredictError(f"{first['error']}; the videos done so far are kept (run the same command again to "
                               f"go on), or pass --on-error skip to leave failing videos out")
    done = _done_videos(options.output) & set(video_ids)
    num_entries = merge_parts(options.output, video_ids, done)
    log(f"results: {num_entries} entries of {len(done)} videos -> {storage.redact(storage.join(options.output, RESULTS_FILE))}"
        f" and {ZIP_FILE}")

    metrics = table = None
    metrics_doc: dict[str, Any] = {"benchmark": options.benchmark, "split": storage.redact(split),
                                   "model": description, "num_videos": len(refs), "videos_with_results": len(done),
                                   "failed_videos": failed}
    if int(manifest.raw.get("num_instances", 0)) > 0:
        metrics, details, table = _evaluate(options.output, manifest, video_ids, options.benchmark)
        metrics_doc.update(details)
        storage.write_text(storage.join(options.output, TABLE_FILE), table + "\n")
        log(table)
    else:
        log("the split has no annotations: results and submission zip only, no metrics")
    storage.write_json(storage.join(options.output, METRICS_FILE), metrics_doc, indent=1)
    run_id, tracking_uri = _log_run(experiment, description, weights_location, split, options, refs, done, metrics,
                                    failed, {c.id: c.name for c in manifest.categories}, log)
    return PredictSummary(storage.redact(options.output), storage.redact(split), len(refs), len(todo) - len(failed),
                          len(refs) - len(todo), failed, metrics, table, run_id, tracking_uri, time.time() - started, work_s,
                          video_s)


def split_fingerprint(manifest: Any) -> str:
    """What identifies a split's content for an output cache: its name and its videos, in order."""
    ids = ",".join(str(int(v)) for v in manifest.video_ids)
    return hashlib.sha256(f"{manifest.split}:{ids}".encode()).hexdigest()[:16]


def _run_actors(experiment: Any, model: Any, todo: list, category_ids: tuple[int, ...], options: PredictOptions,
                log: Callable[[str], None], worker_env: Optional[dict[str, str]]) -> tuple[list[dict], float, float]:
    import ray

    from pipelines.ray_runtime import connect, runtime_env_vars

    connect(options.ray_address, log=log)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress lines
    context.print_on_execution_start = False
    use_gpu = options.gpus_per_worker > 0
    spec = ActorSpec(experiment=experiment, weights=None if options.from_cache else model.weights,
                     category_ids=category_ids, output=options.output, cache_outputs=options.cache_outputs,
                     from_cache=options.from_cache, use_gpu=use_gpu, threads=max(1, int(options.cpus_per_worker)))
    rows = [{"video_id": ref.video_id, "shard_uri": ref.shard_uri, "row": ref.row, "length": ref.length}
            for ref in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        PredictActor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker,
        **({"num_gpus": options.gpus_per_worker} if use_gpu else {}),
        **({"runtime_env": runtime_env_vars(worker_env)} if worker_env else {}),
    )
    failed: list[dict] = []
    started = last_line = time.time()
    finished, video_s = 0, 0.0
    for status in dataset.iter_rows():
        finished += 1
        video_s += float(status["seconds"])
        if status["error"]:
            failed.append({"video_id": int(status["video_id"]), "frame": int(status["frame"]),
                           "error": str(status["error"])})
            log(f"video {int(status['video_id'])} failed: {status['error']}")
            if options.on_error == "fail":
                break
        now = time.time()
        if now - last_line >= 5 or finished == len(rows):
            rate = finished / max(now - started, 1e-9)
            log(f"predict: {finished}/{len(rows)} videos, {rate:.2f} videos/s, ETA {(len(rows) - finished) / rate:.0f} s")
            last_line = now
    return failed, time.time() - started, video_s


def _log_run(experiment: Any, description: str, weights_location: str, split: str, options: PredictOptions,
             refs: list, done: set[int], metrics: Optional[dict], failed: list[dict],
             category_names: dict[int, str], log: Callable[[str], None]) -> tuple[Optional[str], Optional[str]]:
    from pipelines.mlflow_runs import MlflowRun, git_info

    mlflow_run = MlflowRun(options.tracking_uri or experiment.tracking.tracking_uri)
    name = options.run_name or f"predict-{experiment.name}"
    mlflow_run.start(experiment.tracking.experiment_name or experiment.name, run_name=name,
                     tags={"ctvis.job": "predict", **git_info()})
    try:
        params = {"model": description, "weights": weights_location, "split": split, "benchmark": options.benchmark,
                  "num_videos": len(refs), "from_cache": options.from_cache or "", "cache_outputs": options.cache_outputs or "",
                  "workers": options.workers, "gpus_per_worker": options.gpus_per_worker, "output": options.output,
                  "data.min_size_test": experiment.data.min_size_test, "data.max_size_test": experiment.data.max_size_test}
        for group in ("tracker", "inference"):
            for key, value in dataclasses.asdict(getattr(experiment.model, group)).items():
                params[f"model.{group}.{key}"] = value
        mlflow_run.log_params(params)
        scalars = dict(metrics or {})
        scalars.update({"videos_failed": len(failed), "videos_with_results": len(done)})
        mlflow_run.log_metrics(scalars, step=0)
        for name_ in (METRICS_FILE, TABLE_FILE, RESULTS_FILE):
            uri = storage.join(options.output, name_)
            if storage.exists(uri):
                mlflow_run.log_bytes(storage.read_bytes(uri), f"predict/{name_}")
        _log_overlays(mlflow_run, experiment, options, refs, done, category_names)
        mlflow_run.end("FINISHED")
    except BaseException:
        mlflow_run.end("FAILED")
        raise
    log(f"MLflow run {mlflow_run.run_id} at {storage.redact(mlflow_run.tracking_uri)}")
    return mlflow_run.run_id, storage.redact(mlflow_run.tracking_uri)


def _log_overlays(mlflow_run: Any, experiment: Any, options: PredictOptions, refs: list, done: set[int],
                  category_names: dict[int, str]) -> None:
    """Overlay strips of the first videos with results, drawn from their results entries."""
    if options.overlays <= 0:
        return
    import numpy as np
    from pycocotools import mask as mask_utils

    from pipelines.data.shards import ShardReader
    from pipelines.inference.videos import read_test_video
    from pipelines.train.visualize import overlay_strip

    reader = ShardReader(columns=["video_id", "height", "width", "frames"])
    for ref in [ref for ref in refs if ref.video_id in done][: options.overlays]:
        entries = [e for e in json.loads(storage.read_bytes(part_uri(options.output, ref.video_id)))
                   if e["score"] >= 0.3]
        video = read_test_video(reader, ref, experiment.data.min_size_test, experiment.data.max_size_test)
        frames = video.original_frames()
        masks = np.stack([np.moveaxis(mask_utils.decode(e["segmentations"]), -1, 0).astype(bool) for e in entries]) \
            if entries else np.zeros((0, *frames.shape[:3]), dtype=bool)
        png = overlay_strip(frames, masks, list(range(len(entries))), [e["score"] for e in entries],
                            [category_names.get(e["category_id"], str(e["category_id"])) for e in entries])
        mlflow_run.log_bytes(png, f"predict/overlays/video_{ref.video_id}.png")
