"""Real services for integration tests, bound to 127.0.0.1 and stopped by whoever started them.

- an S3 server: moto in server mode (speaks the real S3 wire protocol), as a subprocess;
- an MLflow tracking server (sqlite backend store, proxied artifacts in the moto bucket);
- a Ray local cluster on loopback only (see shared/RAY_MLFLOW_NOTES.md).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Fake credentials for the local moto server; real ones never appear in tests.
TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process started with start_new_session=True, with everything it spawned."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@dataclass
class S3Server:
    endpoint_url: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[S3Server]:
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **TEST_AWS_ENV},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/moto-api/", proc, 60, log)
        env = {**TEST_AWS_ENV, "AWS_ENDPOINT_URL": url}
        yield S3Server(url, env)
    finally:
        stop_process(proc)


@dataclass
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str


class MlflowServerProcess:
    """An `mlflow server` on a fixed 127.0.0.1 port (sqlite store, artifacts proxied to the moto
    bucket) that can be stopped and started again on the same port and store: an outage."""

    def __init__(self, workdir: Path, s3: S3Server, bucket: str):
        self.workdir, self.port = workdir, free_port()
        self.artifacts = f"s3://{bucket}/mlartifacts"
        self.tracking_uri = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            **s3.env,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            # keep the server's own housekeeping quiet and local
            "MLFLOW_TRACKING_URI": "",
        }
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.workdir / "mlflow-server.log"
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mlflow", "server",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
                    "--artifacts-destination", self.artifacts,
                    "--workers", "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
                cwd=self.workdir,
            )
        _wait_http(f"{self.tracking_uri}/health", self._proc, 120, log)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def kill(self) -> None:
        """Gone at once (SIGKILL), as a crashed server or a lost machine: a graceful stop would still
        answer the requests already on their way."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)
            self._proc = None


@contextlib.contextmanager
def mlflow_server(workdir: Path, s3: S3Server, bucket: str) -> Iterator[MlflowServer]:
    server = MlflowServerProcess(workdir, s3, bucket)
    try:
        server.start()
        yield MlflowServer(server.tracking_uri, server.artifacts)
    finally:
        server.stop()


def ray_loopback_env(home: Path) -> dict[str, str]:
    """Environment that keeps a local Ray cluster on 127.0.0.1 with its auth token in `home`."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def descendants(root: int) -> set[int]:
    """`root` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return False
    return "zombie" not in state.lower()


def kill_tree(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL `proc` (started with start_new_session=True) and every process below it, at once, and
    wait until they are gone: processes a command started (a local Ray's raylet, workers and actors)
    need not share its process group, and one left alive could go on writing."""
    doomed = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in doomed if pid != proc.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {proc.args!r} outlived SIGKILL")
        time.sleep(0.1)


def _hex_address(text: str) -> str:
    """/proc/net/tcp{,6} local address -> dotted IPv4 (IPv4-mapped IPv6 included) or an IPv6 hex string."""
    import ipaddress

    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def listening_sockets(root_pid: int) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket listening in `root_pid` or its descendants."""
    inodes: dict[str, int] = {}
    for pid in descendants(root_pid):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            if fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((_hex_address(address), int(port, 16), inodes[fields[9]]))
    return found


def storage_env_vars() -> dict[str, str]:
    """The AWS_* variables of this process that may travel in a Ray runtime_env (the endpoint and the
    region): the secret key never does (Ray logs runtime_envs; `pipelines.ray_runtime.runtime_env_vars`
    refuses it). Workers of the test Ray have it from their environment (the Ray started after moto)."""
    from pipelines.redaction import SECRET_ENV_VARS

    return {k: v for k, v in os.environ.items() if k.startswith("AWS_") and k not in SECRET_ENV_VARS}
