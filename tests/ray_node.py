"""`ray start` for the second node of a test cluster on 127.0.0.1:
``python -m tests.ray_node start --address=127.0.0.1:PORT --node-ip-address=127.0.0.1 ...``.

Ray's CLI adds a node to a cluster only when multi-node clusters are enabled
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``), and enabling them makes Ray 2.60 replace 127.0.0.1 by the
machine's routable address, so that node's servers bind every interface. This runs the same CLI
with only that refusal lifted: the CLI module sees clusters enabled, while every other part of Ray
(address resolution, the raylet and agents the node starts, which inherit the variable at 0) keeps
127.0.0.1. The node-loss test checks that every socket the node listens on is on 127.0.0.1.
"""
from __future__ import annotations

import sys
import types


def main() -> int:
    import ray._private.ray_constants as ray_constants
    import ray.scripts.scripts as ray_cli

    cli_view = types.ModuleType(ray_constants.__name__)
    cli_view.__dict__.update(vars(ray_constants))
    cli_view.ENABLE_RAY_CLUSTER = True
    ray_cli.ray_constants = cli_view  # the CLI's own reference only; ray._private.services keeps the real one
    sys.argv[0] = "ray"
    return ray_cli.main()


if __name__ == "__main__":
    sys.exit(main())
