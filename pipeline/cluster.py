"""Starting or joining Ray, the same way for every command."""

from __future__ import annotations

import logging
import os


def init_ray(address: str = "", num_cpus: int = 0, num_gpus: int | None = None) -> None:
    """Start a local Ray (address "") or join a cluster ("auto" or HOST:PORT), quietly.

    `num_cpus`/`num_gpus` only size a local instance; a cluster brings its own resources.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or None, num_gpus=num_gpus, **kwargs)


def node_id() -> str:
    """The Ray node this code runs on, for run records ("local" outside Ray: plain calls and tests)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
