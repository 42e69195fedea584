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
    # A local Ray starts its workers at niceness 15, below every other process of the user: on a machine
    # shared with anything else (an editor's indexer, a second job) the training or inference itself then
    # gets a fraction of the CPU (seen on the 2-core VM: `spix train` beside four `nice -n 19` test runs got
    # about half of it, its Ray Data crop tasks less).
    # spix's workers are the job the user asked for; they run at the user's own priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs: dict = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or None, num_gpus=num_gpus, **kwargs)


def node_id() -> str:
    """The Ray node this code runs on, for run records ("local" outside Ray: plain calls and tests)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
