"""What a new user meets first when training (issue: the README's own commands, relative paths, resume,
weights, secrets, Ray on loopback): every mistake is found on the driver, before a worker starts or an
MLflow run is made, with a message that says what to change."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.config import load_experiment
from pipelines.train.job import prepare
from pipelines.train.preflight import PreflightError, check_static, resolve_paths
from tests import services
from tests.conftest import PROJECT_ROOT
from tests.test_train_integration import make_synthetic_shards

TINY = PROJECT_ROOT / "experiments" / "tiny.yaml"


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    train, val = make_synthetic_shards(str(root / "data"))
    return root, train, val


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, **services.ray_loopback_env(home)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _ctvis(args, cwd, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# -- 1. resources: planned before the run, on a real local Ray ---------------------------------------
@pytest.mark.integration
def test_training_that_cannot_fit_the_cluster_fails_before_anything_starts(local_shards, tmp_path):
    root, train, val = local_shards
    home = tmp_path / "home"
    home.mkdir()
    cpus = os.cpu_count() or 2
    workers = 2 * cpus  # one CPU each can never fit this machine
    done = _ctvis(["train", str(TINY), f"data.train.0.shards={train}", f"data.val.shards={val}",
                   f"compute.num_workers={workers}", f"train.batch_size={workers}"], tmp_path, _env(home))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"needs {workers * 1.25:g} CPUs but the cluster has {cpus}" in done.stderr
    assert "fewer compute.num_workers" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "runs").exists()  # no MLflow run, no run dir


@pytest.mark.integration
def test_the_readme_two_worker_command_on_two_cpus_names_the_fix(ray_local):
    import dataclasses

    from pipelines.ray_runtime import ResourceError, check_training_fits, describe_cluster, training_plan

    local = dataclasses.replace(describe_cluster(), started_here=True)  # as `ctvis train` starts it
    experiment = load_experiment(TINY, ["compute.num_workers=2"])
    with pytest.raises(ResourceError, match=r"needs 2.5 CPUs but the cluster has 2: set compute.cpus_per_worker=0.75"):
        check_training_fits(training_plan(experiment), local, experiment.source)
    fitting = load_experiment(TINY, ["compute.num_workers=2", "compute.cpus_per_worker=0.75"])
    check_training_fits(training_plan(fitting), local, fitting.source)
    # a cluster we connected to may still be starting nodes or autoscale: a warning, not an error
    lines: list[str] = []
    check_training_fits(training_plan(experiment), dataclasses.replace(local, started_here=False),
                        experiment.source, lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning:") and "needs 2.5 CPUs" in lines[0]


@pytest.mark.integration
def test_a_stalled_run_says_so_with_what_the_cluster_waits_for(ray_local, tmp_path):
    from pipelines.train import state
    from pipelines.train.job import ProgressWatchdog

    lines: list[str] = []
    state.write_progress(str(tmp_path), "run", {"step": 0, "phase": "old driver"})
    time.sleep(0.05)
    with ProgressWatchdog(str(tmp_path), "run", 100, stall_timeout_s=1.0, log=lines.append, interval_s=0.3,
                          poll_s=0.1):
        time.sleep(0.3)
        state.write_progress(str(tmp_path), "run", {"step": 3, "loss": 1.5, "clips_per_s": 2.0, "steps_per_s": 0.5})
        time.sleep(2.5)
    assert any(line.startswith("step 3/100 (3%), loss 1.5000, 2.0 clips/s, ETA 3m14s") for line in lines), lines
    stalls = [line for line in lines if "no training progress" in line]
    assert stalls and "last at step 3" in stalls[0] and "cluster CPU 2" in stalls[0], lines


# -- 8. a local Ray binds 127.0.0.1 only -------------------------------------------------------------------
@pytest.mark.integration
def test_the_local_ray_of_our_commands_listens_on_loopback_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent("""
        import sys, time
        from pipelines.ray_runtime import connect
        connect(num_cpus=1)
        import ray
        @ray.remote
        def ping():
            return 1
        assert ray.get(ping.remote()) == 1
        print("ready", flush=True)
        sys.stdin.readline()
        ray.shutdown()
    """)
    env = _env(home)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # connect() must set it itself
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sockets = services.listening_sockets(proc.pid)
        assert len(sockets) >= 4, sockets  # GCS, raylet, dashboard, workers ...
        assert all(address == "127.0.0.1" for address, _, _ in sockets), sockets
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            services.stop_process(proc)


# -- 3, 6. paths ----------------------------------------------------------------------------------------------
def test_relative_paths_become_absolute_and_missing_shards_are_named(local_shards, tmp_path):
    root, _, _ = local_shards
    experiment = load_experiment(TINY, ["data.train.0.shards=data/shards/train", "data.val.shards=data/shards/val",
                                        "train.init_weights=w/model.pt", "tracking.tracking_uri=sqlite:///m/mlflow.db"])
    resolved = resolve_paths(experiment, base=str(root))
    assert resolved.data.train[0].shards == str(root / "data/shards/train")
    assert resolved.data.val.shards == str(root / "data/shards/val")
    assert resolved.storage.runs_root == str(root / "runs")
    assert resolved.train.init_weights == str(root / "w/model.pt")
    assert resolved.tracking.tracking_uri == f"sqlite:///{root / 'm/mlflow.db'}"
    # What training does not read stays as written (a job's directory changes at every submission).
    assert resolved.data.train[0].annotations == "data/synth/train/annotations.json"
    assert resolved.data.datasets_root == "datasets"
    check_static(_shards_only(resolved))
    elsewhere = resolve_paths(experiment, base=str(tmp_path))
    with pytest.raises(PreflightError, match=str(tmp_path / "data/shards/train")):
        check_static(_shards_only(elsewhere))


def test_number_of_classes_follows_the_training_data(tmp_path):
    """A custom split with 5 categories trains a 5-class model from a preset made for 3, with a line
    saying so; a validation split with another category table is refused before anything starts."""
    from models.model import build_model

    train, val = make_synthetic_shards(str(tmp_path / "five"), num_classes=5)
    experiment = _shards_only(load_experiment(TINY, [f"data.train.0.shards={train}", f"data.val.shards={val}",
                                                     f"storage.runs_root={tmp_path / 'runs'}"]))
    assert experiment.model.network.num_classes == 3          # the preset's default
    lines: list[str] = []
    prepared = prepare(experiment, lines.append)
    assert prepared.model.network.num_classes == 5
    assert len(lines) == 1 and "model.network.num_classes 3 -> 5" in lines[0] and "5 categories" in lines[0]
    assert build_model(prepared.model).network.decoder.class_head.out_features == 6   # K + no-object
    assert prepared.config_hash() != experiment.config_hash()
    again: list[str] = []
    assert prepare(prepared, again.append) == prepared and not again   # already derived: nothing to say

    _, other_val = make_synthetic_shards(str(tmp_path / "four"), num_classes=4)
    mixed = load_experiment(TINY, [f"data.train.0.shards={train}", f"data.val.shards={other_val}"])
    with pytest.raises(PreflightError, match=r"data.val \(synth_val\) has another category table than data.train"):
        prepare(_shards_only(mixed), lines.append)


def _shards_only(experiment):
    """The experiment training from its first split's shards alone (no raw annotations / frames)."""
    import dataclasses

    split = experiment.data.train[0].model_copy(update={"annotations": None, "frames_root": None})
    data = experiment.data.model_copy(update={"train": (split,)})
    return dataclasses.replace(experiment, platform=experiment.platform.model_copy(update={"data": data}))


def test_under_a_ray_job_run_storage_and_tracking_must_survive_the_job(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    relative = load_experiment(TINY)
    with pytest.raises(PreflightError, match="storage.runs_root='runs' is relative: under a Ray job"):
        resolve_paths(relative, in_job=True)
    shared = load_experiment(TINY, ["storage.runs_root=s3://bucket/runs"])
    with pytest.raises(PreflightError, match="default local store .* would be inside the job's temporary"):
        resolve_paths(shared, in_job=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_paths(shared, in_job=True).storage.runs_root == "s3://bucket/runs"
    assert resolve_paths(load_experiment(TINY, ["storage.runs_root=/shared/runs"]), in_job=True)


# -- 5. resume with another config ------------------------------------------------------------------------------
def test_resuming_a_run_with_a_changed_config_is_an_error_unless_asked(tmp_path):
    from pipelines.mlflow_runs import MlflowRun
    from pipelines.train import state
    from pipelines.train.job import _start_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs_root = str(tmp_path / "runs")
    first = load_experiment(TINY, ["train.optimizer.lr=1e-4"])
    assert _start_tracking(first, MlflowRun(uri, workdir=str(tmp_path)), runs_root, "r", print) is False
    same = _start_tracking(first, MlflowRun(uri, workdir=str(tmp_path)), runs_root, "r", print)
    assert same is True
    changed = load_experiment(TINY, ["train.optimizer.lr=5e-4", "train.schedule.max_iter=80"])
    with pytest.raises(PreflightError) as caught:
        _start_tracking(changed, MlflowRun(uri, workdir=str(tmp_path)), runs_root, "r", print)
    message = str(caught.value)
    assert "train.optimizer.lr: 0.0001 -> 0.0005" in message and "train.schedule.max_iter: 40 -> 80" in message
    assert "--resume-changed" in message
    mlflow_run = MlflowRun(uri, workdir=str(tmp_path))
    assert _start_tracking(changed, mlflow_run, runs_root, "r", print, resume_changed=True) is True
    run = mlflow_run.client.get_run(mlflow_run.run_id)
    assert "train.optimizer.lr: 0.0001 -> 0.0005" in run.data.tags["resume_changed_at_start_3"]
    assert state.read_run_info(runs_root, "r")["config_hash"] == changed.config_hash()


# -- 9. initial weights are opened on the driver ------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.integration
def test_bad_init_weights_fail_on_the_driver_naming_the_file(local_shards, tmp_path):
    import torch

    root, train, val = local_shards
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Exploit()}, evil)
    home = tmp_path / "home"
    home.mkdir()
    done = _ctvis(["train", str(TINY), f"data.train.0.shards={train}", f"data.val.shards={val}",
                   "compute.cpus_per_worker=0.5", f"train.init_weights={evil}"], tmp_path, _env(home))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"train.init_weights: {evil}: refused" in done.stderr and "posix.system" in done.stderr
    assert "weights_only=False" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlruns").exists()  # found before the MLflow run was made
    missing = _ctvis(["train", str(TINY), f"data.train.0.shards={train}", "data.val=null",
                      "train.init_weights=models:/nosuch@best", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"],
                     tmp_path, _env(home))
    assert missing.returncode == 2 and "no model named 'nosuch' is registered" in missing.stderr, missing.stderr[-2000:]


# -- 4. the demo validates everything before any work -----------------------------------------------------------
def test_schedule_scales_with_an_overridden_max_iter():
    experiment = load_experiment(PROJECT_ROOT / "experiments" / "tiny_demo.yaml", ["train.schedule.max_iter=200"])
    assert experiment.train.schedule.steps == (160,)
    assert any("[960] -> [160]" in note for note in experiment.notes)
    explicit = load_experiment(PROJECT_ROOT / "experiments" / "tiny_demo.yaml",
                               ["train.schedule.max_iter=200", "train.schedule.steps=[100]"])
    assert explicit.train.schedule.steps == (100,) and not explicit.notes


def test_the_demo_rejects_a_bad_config_before_making_data(tmp_path):
    output = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "pipelines.demo", "--output", str(output),
                           "train.schedule.steps=[5000]"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env=_env(tmp_path))
    assert done.returncode == 2
    assert "steps [5000] must not exceed max_iter 1200" in done.stderr and "Traceback" not in done.stderr
    assert not output.exists()


# -- 7. secrets ------------------------------------------------------------------------------------------------------
def test_secrets_never_reach_the_terminal_or_the_resolved_config(tmp_path):
    sentinel = "SENTINEL-s3cr3t-9f8e7d"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "ENVSENTINEL-5a4b3c"}
    error = _ctvis(["config", str(TINY), "train.optimizer.lrr=1", f"storage.s3.secret_access_key={sentinel}"],
                   PROJECT_ROOT, env)
    assert error.returncode == 2 and "train.optimizer.lrr" in error.stderr
    assert sentinel not in error.stderr + error.stdout and "secret_access_key=***" in error.stderr
    shown = _ctvis(["config", str(TINY), f"storage.s3.endpoint_url=http://user:{sentinel}@127.0.0.1:9000",
                    f"storage.s3.secret_access_key={sentinel}"], PROJECT_ROOT, env)
    assert shown.returncode == 0 and sentinel not in shown.stdout + shown.stderr
    assert "http://***@127.0.0.1:9000" in shown.stdout
    wrong_type = _ctvis(["config", str(TINY), "storage.s3.secret_access_key=12345678"], PROJECT_ROOT, env)
    assert wrong_type.returncode == 2 and "12345678" not in wrong_type.stderr
    # a traceback printed by the command is redacted too (the env's secret in an unhandled error)
    crash = subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; "
                            "from pipelines import redaction; redaction.install_redacting_streams(); "
                            "raise RuntimeError('key ' + 'ENVSENTINEL-5a4b3c')"],
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "ENVSENTINEL" not in crash.stderr and "key ***" in crash.stderr


def test_redaction_masks_keys_urls_and_registered_values():
    from pipelines.redaction import redact, redact_override

    assert redact("aws_session_token=abc123&x=1") == "aws_session_token=***&x=1"
    assert redact('{"access_key_id": "AKIAXXXX"}') == '{"access_key_id": "***"}'
    assert redact("https://bob:hunter22@example.org/x") == "https://***@example.org/x"
    assert redact("num_tokens: 12, tokenizer=x") == "num_tokens: 12, tokenizer=x"
    assert redact_override("storage.s3.secret_access_key=zzTopSecret") == "storage.s3.secret_access_key=***"
    assert redact("it was zzTopSecret") == "it was ***"


# -- 10. writes never replace links or devices -----------------------------------------------------------------------
def test_export_refuses_symlinks_and_directories_and_writes_atomically(local_shards, tmp_path):
    root, train, _ = local_shards
    real = tmp_path / "real.json"
    real.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    done = _ctvis(["data", "export", train, str(link)], tmp_path, dict(os.environ))
    assert done.returncode == 2 and "is a symbolic link; refusing to replace it" in done.stderr
    assert link.is_symlink() and real.read_text() == "keep me"
    folder = tmp_path / "folder"
    folder.mkdir()
    done = _ctvis(["data", "export", train, str(folder)], tmp_path, dict(os.environ))
    assert done.returncode == 2 and "is a directory" in done.stderr and folder.is_dir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = _ctvis(["data", "export", train, str(fifo)], tmp_path, dict(os.environ), timeout=60)
    assert done.returncode == 2 and "is a pipe" in done.stderr
    out = tmp_path / "out.json"
    done = _ctvis(["data", "export", train, str(out)], tmp_path, dict(os.environ))
    assert done.returncode == 0 and json.loads(out.read_text())["videos"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


# -- low: one-line errors and clean interrupts --------------------------------------------------------------------
def test_storage_errors_are_one_line_with_exit_2(tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{services.free_port()}",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "SENTINEL-unreachable"}
    done = _ctvis(["data", "inspect", "s3://no-such-bucket/shards"], tmp_path, env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "SENTINEL" not in done.stderr


@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupting_ingest_prints_one_line(tmp_path, signum, code, word):
    from pipelines.data import synth

    raw = synth.generate(str(tmp_path / "raw"), synth.SynthConfig(num_videos=40, min_frames=20, max_frames=30,
                                                                  height=96, width=128, seed=3))
    env = {**_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "data", "ingest", "mine", str(tmp_path / "out"),
                             "--annotations", raw["annotations"], "--frames-root", raw["frames_root"],
                             "--executor", "local", "--shard-mb", "0.05"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert f"ctvis data ingest: {word}" in err and "Traceback" not in err


@pytest.mark.integration
def test_sigterm_ends_a_training_driver_cleanly(local_shards, tmp_path):
    """`ray job stop` / `kill`: exit 143 with one line (it was an abort, exit 134), the MLflow run KILLED
    (not FAILED: the same command continues it), and no Ray process left behind."""
    from mlflow.tracking import MlflowClient

    root, train, val = local_shards
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", str(TINY), f"data.train.0.shards={train}",
                             f"data.val.shards={val}", "compute.num_workers=2", "compute.cpus_per_worker=0.5",
                             "train.schedule.max_iter=400", "train.log_period=1"], cwd=tmp_path, env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    progress = tmp_path / "runs" / "tiny" / "progress.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists():  # rank 0 is up: the driver is inside fit()
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "ctvis train: terminated" in err
    assert not re.search(r"^Traceback", err, flags=re.M)  # none of ours (Ray's actors may log their own)
    info = json.loads((tmp_path / "runs" / "tiny" / "ctvis_run.json").read_text())
    run = MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"])
    assert run.info.status == "KILLED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("Ray processes outlived the driver")
