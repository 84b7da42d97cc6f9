"""Connecting to Ray, and checking that a job's resources fit the cluster before it starts.

`connect()` is the one place a job gets its Ray:
- an address (``--ray-address``, ``RAY_ADDRESS``, or the cluster of a `ray job submit` job): connect;
- otherwise a local Ray, started on loopback only: every Ray service, the dashboard and every worker
  bind 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` with node IP 127.0.0.1), so a laptop run
  opens no port to the network. Its GCS port is chosen here and ``RAY_ADDRESS`` names it for every
  process of the cluster: Ray Train's placement-group cleaner (inside Tune trials too) finds its
  cluster by address instead of by scanning the machine, which fails when another Ray runs there
  ("Found multiple active Ray instances") and leaves a stopped trial's workers holding their CPUs.

`check_training_fits()` counts what a training run asks for (Ray Train workers, and each worker's
Ray Data clip decoders) against the cluster: on the local Ray a run that cannot fit would wait forever
for CPUs that never free up, so there it is an error that says which setting to change.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

LOOPBACK = "127.0.0.1"
_started_address: Optional[str] = None  # the RAY_ADDRESS this process set for the local Ray it started


class ResourceError(ValueError):
    """The job does not fit the cluster; the message says what to change."""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def in_ray_job() -> bool:
    """Whether this process is the driver of a `ray job submit` job (Ray sets this for job drivers)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    started_here: bool  # a local Ray this process started (fixed size: it never grows)
    num_nodes: int
    cpus: float
    gpus: float


def connect(address: Optional[str] = None, *, num_cpus: Optional[int] = None, log_to_driver: bool = True,
            log: Callable[[str], None] = lambda line: None) -> ClusterInfo:
    """Connect to Ray (see the module docstring) unless already connected; describe the cluster."""
    global _started_here, _started_address
    import signal
    import threading

    environment_address = os.environ.get("RAY_ADDRESS") or None
    if environment_address is not None and environment_address == _started_address:
        environment_address = None  # ours, from a local Ray this process started and shut down before
    address = address or environment_address
    # Before importing ray: its services read this when they start.
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Ray's C++ failure-signal handler turns a SIGTERM of the driver (`ray job stop`, `kill`) into an
    # abort (exit 134) before Python can end the run cleanly; the `ctvis` command handles SIGTERM itself.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray

    if not ray.is_initialized():
        in_main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if in_main else None
        _started_here = not address
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            # The dashboard serves the State API, which Ray Train's placement-group cleaner and our
            # stall reports need; it binds 127.0.0.1 like everything else here.
            port = _free_port()
            _started_address = f"{LOOPBACK}:{port}"
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            os.environ["RAY_ADDRESS"] = _started_address  # inherited by the cluster's processes
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                     _node_ip_address=LOOPBACK, configure_logging=False, log_to_driver=log_to_driver)
            log(f"started a local Ray on {LOOPBACK} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
        if in_main and handler not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, handler)  # ray.init replaced it with a bare sys.exit
    return describe_cluster()


_started_here = False  # the Ray this process is connected to is a local one connect() started


def describe_cluster() -> ClusterInfo:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return ClusterInfo(started_here=_started_here, num_nodes=len(nodes), cpus=float(resources.get("CPU", 0.0)),
                       gpus=float(resources.get("GPU", 0.0)))


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    decoders_per_worker: int
    cpus_per_decoder: float

    @property
    def cpus(self) -> float:
        return self.workers * (self.cpus_per_worker + self.decoders_per_worker * self.cpus_per_decoder)

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def describe(self) -> str:
        return (f"{self.workers} Ray Train workers x {self.cpus_per_worker:g} CPU"
                + (f" + {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else "")
                + f", each with {self.decoders_per_worker} clip decoder(s) x {self.cpus_per_decoder:g} CPU"
                + f" = {self.cpus:g} CPUs" + (f", {self.gpus:g} GPUs" if self.gpus else ""))


def training_plan(experiment: Any) -> TrainingPlan:
    compute = experiment.compute
    return TrainingPlan(workers=compute.num_workers, cpus_per_worker=compute.cpus_per_worker,
                        gpus_per_worker=compute.gpus_per_worker if compute.use_gpu else 0.0,
                        decoders_per_worker=experiment.data.decode_workers, cpus_per_decoder=compute.cpus_per_decoder)


def check_training_fits(plan: TrainingPlan, cluster: ClusterInfo, source: str,
                        log: Callable[[str], None] = print) -> None:
    """Raise ResourceError when `plan` cannot run on the local Ray this process started (it will
    never grow); on a cluster it connected to (still starting, or autoscaled) say so and go on."""
    problems = []
    if plan.cpus > cluster.cpus + 1e-9:
        decoders = plan.workers * plan.decoders_per_worker * plan.cpus_per_decoder
        fitting = (cluster.cpus - decoders) / plan.workers
        if fitting > 0:
            hint = f"set compute.cpus_per_worker={_round_down(fitting)}"
        else:
            hint = "lower compute.cpus_per_decoder or data.decode_workers"
        problems.append(f"needs {plan.cpus:g} CPUs but the cluster has {cluster.cpus:g}: {hint}, "
                        f"or fewer compute.num_workers")
    if plan.gpus > cluster.gpus + 1e-9:
        problems.append(f"needs {plan.gpus:g} GPUs but the cluster has {cluster.gpus:g}: set compute.num_workers "
                        f"/ compute.gpus_per_worker to fit, or compute.use_gpu=false")
    if not problems:
        return
    message = f"{source}: {plan.describe()}; " + "; ".join(problems)
    if cluster.started_here:
        raise ResourceError(message + " (otherwise the run would wait forever for resources that never free up)")
    log(f"warning: {message} right now; it will wait for the cluster to grow (nodes starting, autoscaler) - "
        f"the progress lines say when it stalls")


def _round_down(value: float) -> str:
    """A friendly value <= `value` (multiples of 0.05)."""
    return f"{max(0.05, int(value * 20) / 20):g}"


def resource_diagnosis() -> str:
    """What is waiting for what, for a stall report: available resources and pending actors/tasks."""
    import ray

    lines = [f"cluster {_fmt(ray.cluster_resources())}; available now {_fmt(ray.available_resources())}"]
    try:
        from ray.util.state import list_actors, list_tasks

        pending = [a for a in list_actors(filters=[("state", "=", "PENDING_CREATION")], raise_on_missing_output=False)]
        if pending:
            lines.append(f"{len(pending)} actors waiting to be scheduled: "
                         + ", ".join(sorted({a.class_name for a in pending})))
        waiting = list_tasks(filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], raise_on_missing_output=False)
        if waiting:
            lines.append(f"{len(waiting)} tasks waiting for resources: " + ", ".join(sorted({t.name for t in waiting})))
    except Exception as error:  # noqa: BLE001 - the state API needs the dashboard; the rest still helps
        lines.append(f"(no pending-work details: {type(error).__name__})")
    return "; ".join(lines)


def _fmt(resources: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory") and v) or "-"


def runtime_env_vars(env: Optional[dict[str, str]], what: str = "worker_env") -> Optional[dict[str, Any]]:
    """The ``runtime_env`` that hands `env` to Ray workers (None for none), refusing secrets.

    Ray writes a runtime_env in clear text to its logs (``runtime_env_agent.log``), its job table and
    the dashboard, so credentials must not travel this way: the error says to give the cluster's
    nodes their own (instance roles, the nodes' environment; a local Ray started by the command
    inherits the command's environment)."""
    if not env:
        return None
    from pipelines.redaction import SECRET_ENV_VARS

    secret = sorted(k for k in env if k in SECRET_ENV_VARS and k != "AWS_ACCESS_KEY_ID")
    if secret:
        raise ValueError(f"{what}: {', '.join(secret)} would be written in clear text to Ray's logs and dashboard "
                         "(a runtime_env is not secret); give the cluster's nodes their own credentials (instance "
                         "role or the nodes' environment). A local Ray started by this command inherits its environment.")
    return {"env_vars": dict(env)}


# The AWS credential variables Ray Tune copies from the driver into every trial actor's runtime_env.
_TUNE_PROPAGATED_CREDENTIALS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                          "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_tune_trials() -> None:
    """Ray Tune puts the driver's AWS credentials in each trial actor's runtime_env
    (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``), and Ray writes runtime_envs in clear
    text to ``runtime_env_agent.log``: the secret key ended up there. Take the credentials off that
    list, as `runtime_env_vars` refuses them: a local Ray started by the command inherits its
    environment, and a cluster's nodes have their own (the whole set is dropped, because an access
    key id handed over without its secret would hide a node's own credentials from botocore)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - _TUNE_PROPAGATED_CREDENTIALS
