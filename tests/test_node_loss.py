"""A Ray node lost mid-run: a two-node Ray cluster on 127.0.0.1 (a head of 2 CPUs and a second node
of 1 CPU, each its own `ray start --block` process), `ctvis train --ray-address` with its two workers
spread over both nodes (`compute.placement_strategy=SPREAD`), and the second node's processes
SIGKILLed once the run has a checkpoint. Ray Train restarts the worker group from that checkpoint
on the head alone (`compute.max_failures`), and the run ends at the planned step, in one MLflow
run, with the loss of the same run on the intact cluster.

Every server of both nodes listens on 127.0.0.1 only (checked from /proc). The second node is
started by `tests/ray_node.py` (why is said there); the head is stopped by signalling its process
group, never by `ray stop`, which would also stop the session's other local Ray.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import services
from tests.conftest import PROJECT_ROOT
from tests.test_train_integration import make_synthetic_shards, tiny_overrides
from tests.test_train_job import _head_env, _ray_cli, _wait_dashboard

MAX_ITER = 12


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
                                start_new_session=True)


def _alive_nodes(env: dict[str, str], gcs_address: str) -> int:
    status = subprocess.run([_ray_cli(), "status", f"--address={gcs_address}"], env=env, capture_output=True,
                            text=True, timeout=60)
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if " node_" in line)


def _wait_nodes(env, gcs_address: str, count: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _alive_nodes(env, gcs_address) != count:
        assert all(p.poll() is None for p in procs), "a ray start process exited"
        assert time.monotonic() < deadline, f"the cluster did not reach {count} nodes in {timeout:.0f}s"
        time.sleep(1.0)


def _registered_step(run_dir: str) -> int | None:
    """The step of the latest checkpoint Ray Train has registered for the run (its checkpoint manager
    keeps a snapshot in the run's storage), or None. A checkpoint whose files are uploaded is not yet
    one a restart resumes from: every worker must have reported it first."""
    from pipelines import storage

    try:
        snapshot = json.loads(storage.read_text(f"{run_dir}/checkpoint_manager_snapshot.json"))
    except (storage.StorageNotFound, json.JSONDecodeError):
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    found = re.search(r"checkpoint_step(\d+)", latest.get("checkpoint_dir_name") or "")
    return int(found.group(1)) if found else None


def _train_workers(root_pid: int) -> list[int]:
    """Ray Train worker processes in the process tree of one node (Ray titles them ray::RayTrainWorker...)."""
    found = []
    for pid in services.descendants(root_pid):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_a_lost_node_costs_a_restart_from_the_last_checkpoint_and_nothing_else(s3_server, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines import storage

    bucket = "node-loss"
    s3_server.client().create_bucket(Bucket=bucket)
    train_shards, val_shards = make_synthetic_shards(f"s3://{bucket}/data")
    runs_root = f"s3://{bucket}/runs"

    def command(run_name: str, gcs_address: str) -> list[str]:
        overrides = tiny_overrides(train_shards, val_shards, runs_root, mlflow_server.tracking_uri)
        return [sys.executable, "-m", "pipelines.cli", "train", "experiments/tiny.yaml", *overrides,
                f"train.run_name={run_name}", "train.eval_period=0", "compute.placement_strategy=SPREAD",
                f"train.schedule={{max_iter: {MAX_ITER}, steps: [10], warmup_iters: 2}}",
                "--ray-address", gcs_address]

    home = tmp_path / "home"
    home.mkdir()
    env = _head_env(home, s3_server.env)
    token = subprocess.run([_ray_cli(), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert token.returncode == 0, token.stderr
    temp_dir = tempfile.mkdtemp(prefix="raynl", dir="/tmp")  # short: Ray's socket paths have a length limit
    head_ports = {flag: services.free_port() for flag in (
        "--port", "--dashboard-port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
        "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
        "--runtime-env-agent-port")}
    gcs_address = f"127.0.0.1:{head_ports['--port']}"
    # Processes of this cluster (Ray Train's placement-group cleaner) find it by address, not by scanning
    # the machine, where the session's other local Ray runs too (one Ray per machine on a real cluster).
    env["RAY_ADDRESS"] = gcs_address
    head = _start([_ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--temp-dir", temp_dir,
                   "--disable-usage-stats", *[f"{flag}={port}" for flag, port in head_ports.items()]],
                  env, tmp_path / "ray-head.log")

    node_ports = {flag: services.free_port() for flag in (
        "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")}
    node = None
    try:
        _wait_dashboard(f"http://127.0.0.1:{head_ports['--dashboard-port']}/api/version", head, 120,
                        tmp_path / "ray-head.log")
        node = _start([sys.executable, "-m", "tests.ray_node", "start", "--block", f"--address={gcs_address}",
                       "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                       *[f"{flag}={port}" for flag, port in node_ports.items()]], env, tmp_path / "ray-node.log")
        _wait_nodes(env, gcs_address, 2, [head, node])
        for proc in (head, node):
            addresses = {address for address, _, _ in services.listening_sockets(proc.pid)}
            assert addresses == {"127.0.0.1"}, addresses

        # The same run on the intact cluster: the loss the run that loses a node must end with.
        clean = subprocess.run(command("intact", gcs_address), env=env, cwd=PROJECT_ROOT, capture_output=True,
                               text=True, timeout=400, start_new_session=True)
        assert clean.returncode == 0, clean.stderr[-4000:]
        expected = storage.read_json(f"{runs_root}/intact/ctvis_run.json")
        assert expected["finished"] and expected["final_step"] == MAX_ITER

        driver = _start(command("lost", gcs_address), env, tmp_path / "train-lost.log")
        deadline = time.monotonic() + 300
        while (registered := _registered_step(f"{runs_root}/lost")) is None or not _train_workers(node.pid):
            assert driver.poll() is None, (tmp_path / "train-lost.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no registered checkpoint with a worker on the second node in 300 s"
            time.sleep(0.2)
        services.kill_tree(node)  # the node's raylet, agents, its training worker and data actors, at once
        assert driver.wait(timeout=400) == 0, (tmp_path / "train-lost.log").read_text()[-4000:]
        log = (tmp_path / "train-lost.log").read_text()

        info = storage.read_json(f"{runs_root}/lost/ctvis_run.json")
        assert info["finished"] and info["final_step"] == MAX_ITER, log[-4000:]
        assert info["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
        client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                  filter_string="tags.ray_run_name = 'lost'")
        assert [r.info.run_id for r in runs] == [info["mlflow_run_id"]]
        run = runs[0]
        assert run.info.status == "FINISHED"
        # The worker group restarted from the latest checkpoint registered before the loss: the one seen
        # then, or one registered in the moment before the kill.
        resumed_from = int(run.data.tags["resumed_from_step"])
        assert registered <= resumed_from < MAX_ITER and resumed_from % 2 == 0, (registered, resumed_from)
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss_total")}
        assert steps == set(range(1, MAX_ITER + 1))
        assert _alive_nodes(env, gcs_address) == 1  # it finished on what remained
    finally:
        if node is not None and node.poll() is None:
            services.kill_tree(node)
        services.stop_process(head, timeout=10)
