"""Spread the per-frame mask-intersection work of an evaluation over Ray workers.

The intersections are independent per (prediction frame, ground-truth frame) pair, so `evaluate()`
hands them out in chunks through a map function; this module provides one backed by Ray tasks.
Ray is imported only here, only when asked for.
"""
from __future__ import annotations

from .metrics import IntersectionMap, _intersection_task


def ray_intersection_map(num_workers: int, address: str | None = None) -> IntersectionMap:
    """A map function running intersection chunks as Ray tasks (starts a local Ray when none runs)."""
    from pipelines.ray_runtime import connect

    connect(address, num_cpus=num_workers, log_to_driver=False)  # the given cluster, or a local Ray on 127.0.0.1
    import ray

    task = ray.remote(num_cpus=1)(_intersection_task)

    def run(items: list) -> list:
        return ray.get([task.remote(item) for item in items])

    return run
