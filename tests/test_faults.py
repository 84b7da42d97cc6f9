"""Reliability: the platform under faults, with the real components.

Flaky object storage: a fault-injecting TCP proxy (tests/faults.py) sits between every S3 client
and the moto server. Ingest, `ctvis eval` and `ctvis predict` from `s3://` through it give results
identical to a clean run; a persistent outage ends in a bounded time with an error naming the
endpoint and the bucket, and nothing that looks complete. (Training under the same faults is in
tests/test_train_integration.py, beside its clean run.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.data import catalog, synth
from pipelines.data.ingest import IngestOptions, ingest
from tests import services
from tests.conftest import PROJECT_ROOT
from tests.faults import FaultRates, FaultyProxy, through

# About one request in eight meets a fault; every kind occurs in each test that uses it.
FLAKY = FaultRates(drop=0.04, slowdown=0.04, reset=0.03, stall=0.015, stall_s=1.0)
TINY = PROJECT_ROOT / "experiments" / "tiny.yaml"
TEST_SIZES = ["data.min_size_test=64", "data.max_size_test=96"]


@pytest.fixture
def proxy(s3_server):
    host, port = s3_server.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultyProxy((host, int(port)), FLAKY, seed=1234) as running:
        yield running


def _generate(root: str, videos: int = 4, seed: int = 31) -> catalog.SplitInfo:
    raw = synth.generate(f"{root}/raw", synth.SynthConfig(num_videos=videos, min_frames=4, max_frames=6, height=64,
                                                          width=64, num_classes=3, seed=seed))
    return catalog.resolve_split("synth_faults", annotations=raw["annotations"], frames_root=raw["frames_root"])


def _shard_view(manifest: dict) -> dict:
    """What two ingests of the same split must agree on (everything but timing and resumption)."""
    return {k: v for k, v in manifest.items() if k not in ("resumed_shards",)}


@pytest.mark.integration
def test_flaky_s3_ingest_eval_and_predict_give_the_clean_results(s3_bucket, proxy, tiny_weights, tmp_path):
    from tests.test_predict import in_process_results, _model

    root = f"s3://{s3_bucket}"
    info = _generate(root)  # written directly: the split itself is intact
    clean = ingest(info, f"{root}/clean", IngestOptions(executor="local", io_threads=4))

    with through(proxy) as env:
        # Ingest: the JSON and frames read from S3, shards and markers written to S3, through the proxy.
        flaky = ingest(info, f"{root}/flaky", IngestOptions(executor="local", io_threads=4))
        assert _shard_view(flaky) == _shard_view(clean)
        for shard in clean["shards"]:
            assert storage.read_bytes(f"{root}/flaky/{shard['path']}") == storage.read_bytes(f"{root}/clean/{shard['path']}")

        # `ctvis predict` over those shards (a Ray actor reads them, results go to S3), through the proxy.
        home = tmp_path / "home"
        home.mkdir()
        run_env = {**env, **services.ray_loopback_env(home)}
        run_env.pop("RAY_ADDRESS", None)
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "predict", str(TINY), f"{root}/flaky", f"model.weights={tiny_weights}",
             *TEST_SIZES, "--output", f"{root}/predict", "--workers", "1", "--overlays", "0",
             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=400, start_new_session=True)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(storage.read_bytes(f"{root}/predict/results.json"))

        # `ctvis eval` of those results against the ground truth, both read from S3, faulty then clean.
        evaluated = {}
        for mode in ("faulty", "clean"):
            proxy.mode = mode
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.cli", "eval", "--gt", info.annotations,
                 "--results", f"{root}/predict/results.json", "--output", str(tmp_path / f"eval-{mode}.json")],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            evaluated[mode] = json.loads((tmp_path / f"eval-{mode}.json").read_text())
        assert evaluated["faulty"]["stats"] == evaluated["clean"]["stats"]
        assert evaluated["faulty"]["per_category"] == evaluated["clean"]["per_category"]

    # the same weights over the clean shards, in this process, without S3 faults
    assert results == in_process_results(_model(tiny_weights), f"{root}/clean")
    faults = {k: v for k, v in proxy.counts.items() if k != "pass"}
    assert set(faults) == {"drop", "slowdown", "reset", "stall"}, proxy.counts


@pytest.mark.integration
def test_a_persistent_s3_outage_ends_soon_naming_endpoint_and_bucket(s3_bucket, proxy, tmp_path):
    root = f"s3://{s3_bucket}"
    info = _generate(root, videos=2)
    proxy.mode = "down"
    with through(proxy) as env:
        started = time.monotonic()
        with pytest.raises(storage.StorageError) as failed:
            ingest(info, f"{root}/shards", IngestOptions(executor="local", io_threads=2))
        elapsed = time.monotonic() - started
        message = str(failed.value)
        assert proxy.endpoint_url.split("//")[1] in message and s3_bucket in message, message
        assert elapsed < 60, f"the outage took {elapsed:.0f} s to be reported"
        print(f"persistent outage reported after {elapsed:.1f} s (default storage.RetryPolicy)")

        # The same from the command line, with fewer attempts (the policy knob): sooner, as clearly.
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "eval", "--gt", info.annotations, "--results",
             info.annotations, "--output", str(tmp_path / "eval.json")],
            cwd=tmp_path, env={**env, "CTVIS_S3_MAX_ATTEMPTS": "2"}, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - started
        assert done.returncode != 0 and elapsed < 30
        assert proxy.endpoint_url.split("//")[1] in done.stderr and s3_bucket in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "eval.json").exists()
    proxy.mode = "clean"
    assert not storage.exists(f"{root}/shards/manifest.json")


# --------------------------------------------------------------------------------------------
# The MLflow server goes away during training.
OUTAGE_MAX_ITER = 8


@pytest.mark.integration
@pytest.mark.slow
def test_training_goes_on_through_an_mlflow_server_outage(s3_server, ray_local, tmp_path):
    """The server is killed after the first step and started again (same port, same store) once
    training has ended: every step's metrics reach the run, the model is logged, the run is FINISHED
    and says how long the server was away. The workers' MLflow client gives up after one quick retry
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1): an outage longer than MLflow's own retries, in test time."""
    import threading

    from mlflow.tracking import MlflowClient

    from pipelines.config import load_experiment
    from pipelines.train import state
    from pipelines.train.job import run_training
    from tests.test_train_integration import make_synthetic_shards, tiny_overrides

    bucket = "mlflow-outage"
    s3_server.client().create_bucket(Bucket=bucket)
    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    server = services.MlflowServerProcess(server_dir, s3_server, bucket)
    server.start()
    try:
        train_shards, val_shards = make_synthetic_shards(str(tmp_path / "data"))
        runs_root = str(tmp_path / "runs")
        overrides = tiny_overrides(train_shards, val_shards, runs_root, server.tracking_uri)
        experiment = load_experiment(TINY, overrides + [
            "train.run_name=outage", f"train.schedule={{max_iter: {OUTAGE_MAX_ITER}, steps: [6], warmup_iters: 2}}",
            "train.checkpoint_period=4", "train.eval_period=4"])
        worker_env = {**services.storage_env_vars(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        outcome: dict = {}

        def train():
            try:
                outcome["summary"] = run_training(experiment, worker_env=worker_env, log=lambda line: None)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=train)
        thread.start()
        deadline = time.monotonic() + 240
        while (state.read_progress(runs_root, "outage") or {}).get("step", 0) < 1:
            assert thread.is_alive(), outcome
            assert time.monotonic() < deadline, "training did not start within 240 s"
            time.sleep(0.1)
        server.kill()
        stopped = time.monotonic()
        # down until the last checkpoint is stored (the training itself is over) and 10 s more
        final = f"{runs_root}/outage/checkpoint_step{OUTAGE_MAX_ITER:07d}"
        while not storage.exists(f"{final}/meta.json") and time.monotonic() - stopped < 240:
            assert thread.is_alive(), outcome
            time.sleep(0.2)
        assert storage.exists(f"{final}/meta.json"), "training stopped while MLflow was away"
        time.sleep(10)
        down_s = time.monotonic() - stopped
        server.start()
        thread.join(timeout=300)
        assert "error" not in outcome, outcome.get("error")
        summary = outcome["summary"]
        assert summary.final_step == OUTAGE_MAX_ITER

        client = MlflowClient(tracking_uri=server.tracking_uri)
        run = client.get_run(summary.mlflow_run_id)
        assert run.info.status == "FINISHED"
        for key in ("loss_total", "train/clips_per_s"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(
                range(1, OUTAGE_MAX_ITER + 1)), key
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/AP")] == [4, 8]
        assert run.data.tags["mlflow_outages"] == "1"
        assert 0.5 * down_s <= float(run.data.tags["mlflow_outage_s"]) <= down_s + 30
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model/artifacts")} == {
            "model/artifacts/model.pt", "model/artifacts/config.yaml", "model/artifacts/classes.json"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "results")} >= {"results/val_results.json"}
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Corrupted data at scale.
@pytest.mark.parametrize("seed", [5, 6])
def test_a_corrupted_split_stops_at_the_first_problem_or_every_problem_is_counted(tmp_path, seed):
    from collections import Counter

    from pipelines.data import shards
    from pipelines.data.formats import DataFormatError
    from tests.faults import CORRUPTIONS, FRAME_CORRUPTIONS, corrupt_split

    raw = synth.generate(str(tmp_path / "raw"), synth.SynthConfig(
        num_videos=48, min_frames=3, max_frames=6, height=32, width=48, num_classes=3, min_instances=2,
        max_instances=3, seed=seed))
    info = catalog.resolve_split("synth_corrupt", annotations=raw["annotations"], frames_root=raw["frames_root"])
    before = json.loads(open(raw["annotations"]).read())
    damage = corrupt_split(raw["annotations"], raw["frames_root"], seed=seed, per_kind=3)
    options = IngestOptions(executor="local", shard_mb=0.02, io_threads=4)

    # Default policy: the first problem stops the job, named (JSON problems are found before any frame is read).
    with pytest.raises(DataFormatError) as stopped:
        ingest(info, str(tmp_path / "fail"), options)
    message = str(stopped.value)
    assert raw["annotations"] in message
    assert any(f"video {d.video_id}" in message and re.search(rf"annotation (id )?{d.annotation_id}\b", message)
               for d in damage if d.annotation_id is not None), message
    assert not storage.exists(str(tmp_path / "fail" / "manifest.json"))

    # Frame problems alone stop naming file, video and frame.
    frames_only = tmp_path / "frames_only.json"
    frames_only.write_text(json.dumps(before))
    first_frame = catalog.resolve_split("synth_corrupt", annotations=str(frames_only), frames_root=raw["frames_root"])
    with pytest.raises(DataFormatError) as stopped:
        ingest(first_frame, str(tmp_path / "fail_frames"), options)
    assert any(f"{d.file}: video {d.video_id} frame {d.frame}: " in str(stopped.value)
               for d in damage if d.kind in FRAME_CORRUPTIONS), str(stopped.value)

    # Skip policy: every problem is counted and the counts reconcile with the damage, exactly.
    manifest = ingest(info, str(tmp_path / "skip"), dataclasses.replace(options, on_error="skip"))
    assert manifest["problem_counts"] == dict(Counter(CORRUPTIONS[d.kind] for d in damage))
    reported = sorted((p["kind"], p.get("video_id"), p.get("annotation_id"), p.get("frame")) for p in manifest["problems"])
    expected = sorted((CORRUPTIONS[d.kind], d.video_id, d.annotation_id,
                       d.frame if d.kind in FRAME_CORRUPTIONS or d.kind == "wrong_size_rle" else None) for d in damage)
    assert reported == expected
    skipped_videos = {d.video_id for d in damage if d.kind in FRAME_CORRUPTIONS}
    dropped_annotations = sum(1 for d in damage if d.kind not in FRAME_CORRUPTIONS)
    assert manifest["num_videos"] == len(before["videos"]) - len(skipped_videos)
    assert manifest["num_instances"] == (len(before["annotations"]) - dropped_annotations
                                         - sum(1 for a in before["annotations"] if a["video_id"] in skipped_videos))
    kept = shards.load_manifest(str(tmp_path / "skip"))
    assert set(kept.video_ids.tolist()) == {v["id"] for v in before["videos"]} - skipped_videos


# --------------------------------------------------------------------------------------------
# Kill at any moment.
KILL_TRIALS = 4


def _tree(root) -> dict[str, bytes]:
    """Every file under `root` (hidden ones included), relative path -> bytes."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _visible_files_are_whole(root) -> None:
    """Nothing a reader would open is half-written: every manifest, marker and shard parses."""
    import pyarrow.parquet as pq

    for path in Path(root).rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        else:
            raise AssertionError(f"unexpected file {path}")


def _kill_at(command: list[str], delay_s: float, cwd, env=None) -> bool:
    """Start `command`, SIGKILL it (and its children) after `delay_s`; True if it was still running."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        services.kill_tree(proc)
        return True


def test_ingest_killed_at_random_moments_ends_identical_when_run_again(tmp_path):
    import random

    raw = synth.generate(str(tmp_path / "raw"), synth.SynthConfig(
        num_videos=24, min_frames=4, max_frames=8, height=48, width=64, num_classes=3, seed=41))

    def command(output) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", "data", "ingest", "synth_kill", str(output),
                "--annotations", raw["annotations"], "--frames-root", raw["frames_root"], "--executor", "local",
                "--shard-mb", "0.02"]

    started = time.monotonic()
    subprocess.run(command(tmp_path / "clean"), check=True, capture_output=True, timeout=300)
    clean_s = time.monotonic() - started
    expected = _tree(tmp_path / "clean")
    assert len([n for n in expected if n.endswith(".parquet")]) >= 4

    rng = random.Random(2026)
    killed = 0
    for trial in range(KILL_TRIALS):
        output = tmp_path / f"trial{trial}"
        # kill at a seeded moment of a run (Python's start-up included), more than once for some trials
        for _ in range(1 + trial % 2):
            killed += _kill_at(command(output), rng.uniform(0.2, clean_s), tmp_path)
            if output.exists():
                _visible_files_are_whole(output)
        again = subprocess.run(command(output), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert _tree(output) == expected, f"trial {trial}"
    assert killed >= KILL_TRIALS  # most kills landed while it ran


def test_eval_results_killed_at_random_moments_are_absent_or_whole(reference_dir, tmp_path):
    import random

    case = reference_dir / "eval" / "a_ytvis_small"
    gt, results = case / "gt.json", case / "results.json"
    output = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "pipelines.cli", "eval", "--gt", str(gt), "--results", str(results),
               "--output", str(output)]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    clean_s = time.monotonic() - started
    expected = json.loads(output.read_text())
    expected.pop("timing_s")
    rng = random.Random(7)
    for _ in range(KILL_TRIALS):
        output.unlink()
        _kill_at(command, rng.uniform(0.1, clean_s), tmp_path)
        if output.exists():  # finished before the kill: whole
            whole = json.loads(output.read_text())
            whole.pop("timing_s")
            assert whole == expected
        assert not [p for p in tmp_path.iterdir() if p.name != "metrics.json" and p.name.startswith("metrics")]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        again = json.loads(output.read_text())
        again.pop("timing_s")
        assert again == expected


# --------------------------------------------------------------------------------------------
# Secrets.
@contextlib.contextmanager
def _sentinel_environment(tmp_path: Path, secret: str, token: str):
    """(env, ray_tmp): this process's environment with a sentinel AWS secret and MLflow token, a local
    Ray on loopback whose files go to `ray_tmp` (removed afterwards). moto accepts any secret: the
    sentinel is the one every S3 request of the commands signs with."""
    import shutil

    ray_tmp = Path(f"/tmp/rs{os.getpid()}")  # short: Ray's socket paths have a length limit
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **services.ray_loopback_env(home), "AWS_SECRET_ACCESS_KEY": secret,
           "MLFLOW_TRACKING_TOKEN": token, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    try:
        yield env, ray_tmp
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _ray_log_texts(ray_tmp: Path) -> list[str]:
    """Every log the Ray a command started wrote (there must be some)."""
    logs = [p for p in ray_tmp.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err", ".json")]
    assert logs  # the Ray the commands started wrote its logs here
    return [p.read_bytes().decode("utf-8", "replace") for p in logs]


def _run_texts(client, runs: list, folder: Path) -> list[str]:
    """The params, tags and every artifact file of each MLflow run, as text."""
    texts = []
    for run in runs:
        texts += [str(run.data.params), str(run.data.tags)]
        local = folder / run.info.run_id
        client.download_artifacts(run.info.run_id, "", str(local))
        texts += [p.read_bytes().decode("utf-8", "replace") for p in local.rglob("*") if p.is_file()]
    return texts


@pytest.mark.integration
def test_ingest_predict_and_eval_keep_secrets_out_of_everything_they_write(s3_bucket, mlflow_server, tiny_weights,
                                                                          tmp_path):
    """A sentinel AWS secret and MLflow token in the environment of `ctvis data ingest` (Ray tasks),
    `ctvis predict` (Ray actors, an MLflow run on the server) and `ctvis eval`, all on S3: neither
    value is in what they print, the files they write, the MLflow run (params, tags, artifacts) or
    the logs of the Ray they start. (Training and Ray job logs: tests/test_train_job.py; zoo and
    infer: tests/test_zoo.py.)"""
    from mlflow.tracking import MlflowClient

    secret, token = "SENTINEL-aws-9a8b7c", "SENTINEL-token-6d5e4f"
    root = f"s3://{s3_bucket}"
    info = _generate(root, videos=2)
    printed = ""
    with _sentinel_environment(tmp_path, secret, token) as (env, ray_tmp):
        for arguments in (
                ["data", "ingest", "synth_secret", f"{root}/shards", "--annotations", info.annotations,
                 "--frames-root", info.frames_root],
                ["predict", str(TINY), f"{root}/shards", f"model.weights={tiny_weights}", *TEST_SIZES, "--output",
                 f"{root}/predict", "--workers", "1", "--overlays", "1", "--tracking-uri", mlflow_server.tracking_uri,
                 "--run-name", "secrets"],
                ["eval", "--gt", info.annotations, "--results", f"{root}/predict/results.json", "--output",
                 f"{root}/metrics.json"]):
            done = subprocess.run([sys.executable, "-m", "pipelines.cli", *arguments], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=400, start_new_session=True)
            assert done.returncode == 0, done.stderr[-3000:]
            printed += done.stdout + done.stderr
        written = [storage.read_bytes(uri).decode("utf-8", "replace") for uri in storage.ls(root, recursive=True)
                   if not uri.endswith((".parquet", ".jpg", ".zip"))]
        logged = _ray_log_texts(ray_tmp)
    client = MlflowClient(mlflow_server.tracking_uri)
    run = next(r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
               if r.info.run_name == "secrets")
    recorded = _run_texts(client, [run], tmp_path / "artifacts")
    assert len(recorded) > 3
    for text in [printed, *written, *logged, *recorded]:
        assert secret not in text and token not in text


@pytest.mark.integration
def test_a_sweep_keeps_secrets_out_of_everything_it_writes(s3_bucket, mlflow_server, tmp_path):
    """`ctvis tune` (Ray Tune trials in Ray actors, the sweep's MLflow run with its trial table, the
    split, the output cache and Tune's state on S3) with a sentinel AWS secret and MLflow token in its
    environment: neither is in what it prints, what it writes to S3, the runs (params, tags,
    artifacts) or the logs of the Ray it starts."""
    from mlflow.tracking import MlflowClient

    from tests.test_predict import _split
    from tests.test_tune import _ground_truth_cache

    secret, token = "SENTINEL-aws-5c4b3a", "SENTINEL-token-2f1e0d"
    root = f"s3://{s3_bucket}"
    split = _split(f"{root}/data", videos=2, seed=8)
    _ground_truth_cache(split, f"{root}/cache")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""
name: secret_sweep
kind: tracker
cache: {root}/cache
split: {split}
search_space:
  model.tracker.match_score_thr: {{grid: [0.3, 0.9]}}
num_samples: 1
max_concurrent_trials: 2
storage_root: {root}/sweeps
""")
    with _sentinel_environment(tmp_path, secret, token) as (env, ray_tmp):
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "tune", str(sweep), "--tracking-uri",
                               mlflow_server.tracking_uri], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=400, start_new_session=True)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout + done.stderr
        written = [storage.read_bytes(uri).decode("utf-8", "replace")
                   for uri in storage.ls(f"{root}/sweeps", recursive=True) if not uri.endswith("/")]
        assert written  # Tune's state and results went to S3
        logged = _ray_log_texts(ray_tmp)
    client = MlflowClient(mlflow_server.tracking_uri)
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in everything if r.info.run_name == "sweep-secret_sweep")
    runs = [parent] + [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.metrics["trials_finished"] == 2  # a tracker sweep's trials are rows of its run's table
    recorded = _run_texts(client, runs, tmp_path / "artifacts")
    for text in [printed, *written, *logged, *recorded]:
        assert secret not in text and token not in text


def test_secrets_never_travel_in_a_ray_runtime_env():
    """Ray writes runtime_envs in clear text to runtime_env_agent.log (seen with the secret of the test
    S3 server before this guard): every place that builds one refuses secret variables."""
    from pipelines.data.ingest import IngestOptions, _run
    from pipelines.ray_runtime import runtime_env_vars

    assert runtime_env_vars(None) is None
    assert runtime_env_vars({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIA"}) == {
        "env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIA"}}
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        with pytest.raises(ValueError, match=f"{name} would be written in clear text") as refused:
            runtime_env_vars({name: "SENTINEL-value"})
        assert "SENTINEL" not in str(refused.value)
    job = dataclasses.make_dataclass("Job", ["index"])(0)
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        list(_run([job], IngestOptions(worker_env={"AWS_SECRET_ACCESS_KEY": "x"})))


def test_one_retry_policy_configures_every_s3_client(monkeypatch):
    """botocore (through s3fs) and pyarrow get the same attempts and timeouts, from one place."""
    monkeypatch.setenv("CTVIS_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("CTVIS_S3_READ_TIMEOUT_S", "7.5")
    policy = storage.RetryPolicy.from_env()
    assert (policy.max_attempts, policy.connect_timeout_s, policy.read_timeout_s) == (3, 10.0, 7.5)
    assert policy.botocore_config() == {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10.0,
                                        "read_timeout": 7.5}
    pyarrow = policy.pyarrow_kwargs()
    assert pyarrow["retry_strategy"].max_attempts == 3 and pyarrow["request_timeout"] == 7.5
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    storage.configure_s3(storage.S3Options())
    try:
        fs, _ = storage.filesystem("s3://bucket/key")
        assert fs.retries == 3 and fs.config_kwargs["retries"]["max_attempts"] == 3
    finally:
        monkeypatch.undo()
        storage.configure_s3(storage.S3Options())
    for bad in ("many", "0"):
        monkeypatch.setenv("CTVIS_S3_MAX_ATTEMPTS", bad)
        with pytest.raises(storage.StorageError, match="CTVIS_S3_MAX_ATTEMPTS"):
            storage.RetryPolicy.from_env()


def test_the_metrics_sender_waits_out_an_outage_and_drops_only_what_the_server_rejects():
    """In order, nothing lost while the server is unreachable; a rejected batch is counted, not retried."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from pipelines.mlflow_runs import _QueuedSender

    class Server:
        def __init__(self):
            self.down, self.accepted = 3, []

        def log_batch(self, run_id, metrics=(), tags=()):
            if self.down:
                self.down -= 1
                raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed "
                                      "with exception HTTPConnectionPool: Max retries exceeded")
            if metrics == ["rejected"]:
                raise MlflowException("Invalid metric", error_code=INVALID_PARAMETER_VALUE)
            self.accepted.append(list(metrics))

    server = Server()
    sender = _QueuedSender(server, "run", retry_pause_s=0.05)
    for batch in (["a"], ["rejected"], ["b"], ["c"]):
        sender.put(metrics=batch)
    assert sender.close(timeout_s=10)
    assert server.accepted == [["a"], ["b"], ["c"]]
    assert (sender.outages, sender.rejected) == (1, 1) and sender.outage_s > 0.1


@pytest.mark.integration
@pytest.mark.slow
def test_training_killed_at_random_moments_ends_with_the_uninterrupted_loss(tmp_path):
    """`ctvis train` (its driver and the local Ray it started) SIGKILLed at seeded moments, checkpoint
    uploads included, then the same command again: it ends at the planned step with the loss of a run
    never interrupted, and every checkpoint left behind is whole."""
    import random

    from mlflow.tracking import MlflowClient

    from pipelines.weights import check_checkpoint_complete
    from tests.test_train_integration import make_synthetic_shards, tiny_overrides

    train_shards, val_shards = make_synthetic_shards(str(tmp_path / "data"))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **services.ray_loopback_env(home)}
    env.pop("RAY_ADDRESS", None)
    max_iter = 8

    def command(run_name: str) -> list[str]:
        overrides = tiny_overrides(train_shards, val_shards, str(tmp_path / "runs"),
                                   f"sqlite:///{tmp_path / 'mlflow.db'}")
        return [sys.executable, "-m", "pipelines.cli", "train", str(TINY), *overrides, f"train.run_name={run_name}",
                f"train.schedule={{max_iter: {max_iter}, steps: [6], warmup_iters: 2}}", "train.eval_period=0"]

    clean = subprocess.run(command("clean"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
                           start_new_session=True)
    assert clean.returncode == 0, clean.stderr[-3000:]
    expected = storage.read_json(str(tmp_path / "runs" / "clean" / "ctvis_run.json"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = random.Random(15)
    for trial in range(2):
        name = f"killed{trial}"
        # A seeded moment after the first step: training steps and checkpoint uploads, not start-up.
        run_dir = tmp_path / "runs" / name
        proc = subprocess.Popen(command(name), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (run_dir / "progress.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 6.0))  # 8 steps and 4 checkpoints take longer than this
        services.kill_tree(proc)  # the driver, its Ray and the training workers
        assert not storage.read_json(str(run_dir / "ctvis_run.json")).get("finished")  # killed before its end
        for checkpoint in sorted(run_dir.glob("checkpoint_step*")):
            if (checkpoint / "meta.json").exists():
                check_checkpoint_complete(str(checkpoint))
        again = subprocess.run(command(name), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
                               start_new_session=True)
        assert again.returncode == 0, again.stderr[-3000:]
        info = storage.read_json(str(run_dir / "ctvis_run.json"))
        assert info["finished"] and info["final_step"] == max_iter
        assert info["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5), trial
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                  filter_string=f"tags.ray_run_name = '{name}'")
        assert [r.info.run_id for r in runs] == [info["mlflow_run_id"]]  # one run, continued by the second command
        assert runs[0].info.status == "FINISHED"
