"""Ray in tests runs on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, loopback node IP)."""
from __future__ import annotations

import pytest


@pytest.mark.integration
def test_ray_cluster_is_loopback_only(ray_local):
    ray = ray_local
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)

    @ray.remote(num_cpus=0.5)
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
