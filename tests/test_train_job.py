"""`ray job submit` of the tiny training against a local Ray head on 127.0.0.1, as on a cluster
(README's cluster section): the job is stopped mid-run (`ray job stop`) and resubmitted, and the
training continues from its last checkpoint into the same MLflow run.

The head runs as `ray start --head --block` in its own process group and is stopped by signalling
that group: a plain `ray stop` would also kill the test session's other local Ray cluster.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import services
from tests.conftest import PROJECT_ROOT
from tests.test_train_integration import make_synthetic_shards, tiny_overrides

MAX_ITER = 40  # long enough that the job is still running when the test sees its first checkpoint


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _head_env(home: Path, s3_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **s3_env, **services.ray_loopback_env(home), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return env


def _job(env: dict[str, str], address: str, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([_ray_cli(), "job", command, "--address", address, *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _status(env, address, job_id) -> str:
    result = _job(env, address, "status", job_id)
    # "Status for job 'x': RUNNING" while it runs, "Job 'x' was stopped" / "... succeeded" / "... failed" after
    out = (result.stdout + result.stderr).lower()
    for word in ("succeeded", "failed", "stopped", "running", "pending"):
        if word in out:
            return word.upper()
    return out.strip()


def _wait(env, address, job_id, done, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(env, address, job_id)
        if status in done:
            return status
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} not {done} after {timeout:.0f}s:\n{_job(env, address, 'logs', job_id).stdout[-4000:]}")


def _wait_dashboard(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until the dashboard answers at all (with token auth on, an unauthenticated GET gets a 401)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not answer {url} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.integration
@pytest.mark.slow
def test_job_submit_stop_and_resubmit_continues_the_same_run(s3_server, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines import storage

    bucket = "train-job"
    s3_server.client().create_bucket(Bucket=bucket)
    train_shards, val_shards = make_synthetic_shards(f"s3://{bucket}/data")
    runs_root = f"s3://{bucket}/runs"
    run_name = "jobrun"
    overrides = tiny_overrides(train_shards, val_shards, runs_root, mlflow_server.tracking_uri)
    overrides = [o for o in overrides if not o.startswith(("train.schedule=", "train.eval_period="))]
    overrides += [f"train.schedule={{max_iter: {MAX_ITER}, steps: [30], warmup_iters: 2}}", "train.eval_period=0",
                  f"train.run_name={run_name}"]
    entrypoint = [sys.executable, "-m", "pipelines.cli", "train", "experiments/tiny.yaml", *overrides]

    home = tmp_path / "home"
    home.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _head_env(home, s3_server.env)
    ports = {flag: services.free_port() for flag in (
        "--port", "--dashboard-port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
        "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
        "--runtime-env-agent-port")}
    token = subprocess.run([_ray_cli(), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
    log = tmp_path / "ray-head.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [_ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus", "2",
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--temp-dir", temp_dir,
             "--disable-usage-stats", *[f"{flag}={port}" for flag, port in ports.items()]],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        _wait_dashboard(f"{address}/api/version", head, 120, log)
        submit = ["submit", "--no-wait", "--working-dir", ".", "--runtime-env", "platform/runtime_env.yaml"]
        first = _job(env, address, *submit, "--submission-id", "train-1", "--", *entrypoint)
        assert first.returncode == 0, first.stdout + first.stderr

        # stop the job once the first checkpoint is in S3 (mid-run: MAX_ITER steps, checkpoints every 2)
        # (any checkpoint: with keep_checkpoints=2 the step-2 one may already be pruned when we look)
        markers = f"{runs_root}/{run_name}/checkpoint_step*/meta.json"
        deadline = time.monotonic() + 240
        while not storage.glob(markers):
            status = _status(env, address, "train-1")
            assert status in ("PENDING", "RUNNING"), _job(env, address, "logs", "train-1").stdout[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.25)
        stopped = _job(env, address, "stop", "train-1")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert _wait(env, address, "train-1", ("STOPPED", "FAILED", "SUCCEEDED"), 60) == "STOPPED"
        run_id = storage.read_json(f"{runs_root}/{run_name}/ctvis_run.json")["mlflow_run_id"]
        client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
        steps_before = {m.step for m in client.get_metric_history(run_id, "loss_total")}
        assert steps_before and max(steps_before) < MAX_ITER

        second = _job(env, address, *submit, "--submission-id", "train-2", "--", *entrypoint)
        assert second.returncode == 0, second.stdout + second.stderr
        status = _wait(env, address, "train-2", ("SUCCEEDED", "FAILED", "STOPPED"), 300)
        logs = _job(env, address, "logs", "train-2").stdout
        assert status == "SUCCEEDED", logs[-4000:]
        assert f"reattached to MLflow run {run_id}" in logs

        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.ray_run_name = '{run_name}'")
        assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run across both drivers
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags["driver_starts"] == "2"
        resumed_from = int(run.data.tags["resumed_from_step"])
        assert resumed_from >= 2 and resumed_from % 2 == 0
        steps = {m.step for m in client.get_metric_history(run_id, "loss_total")}
        assert steps == set(range(1, MAX_ITER + 1))
        meta = storage.read_json(f"{runs_root}/{run_name}/checkpoint_step{MAX_ITER:07d}/meta.json")
        assert meta["mlflow_run_id"] == run_id and meta["step"] == MAX_ITER

        # The S3 secret the cluster's nodes hold is nowhere in what the job wrote: its logs, Ray's own
        # logs (runtime_env agent, raylet, workers), the run's params and tags.
        secret = services.TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"]
        assert secret not in logs + _job(env, address, "logs", "train-1").stdout
        leaked = [str(p) for p in Path(temp_dir).rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err", ".json")
                  and secret.encode() in p.read_bytes()]
        assert not leaked, leaked
        assert secret not in json.dumps([run.data.params, run.data.tags])
    finally:
        services.stop_process(head, timeout=10)  # ray start --block may ignore SIGTERM: then SIGKILL to its group
