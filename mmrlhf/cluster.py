"""Joining or starting the Ray cluster a run uses, and leaving it clean.

`init_ray` follows Ray's own rule (Ray docs, "Starting Ray"): when `RAY_ADDRESS` is set, as it is
for a job started with `ray job submit`, `ray.init()` joins that cluster and the cluster's own
resources apply; otherwise it starts a local cluster sized by the arguments.

Token authentication (Ray 2.60, `ray/_private/authentication/authentication_token_setup.py`):
a new local cluster started by `ray.init()` turns token auth on unless `RAY_AUTH_MODE` is set. It
sets `RAY_AUTH_MODE=token` in this process's environment (it stays set after `ray.shutdown()`), and
when no token is found it writes a fresh one to `~/.ray/auth_token`. Tokens are looked up in
`RAY_AUTH_TOKEN`, then the file named by `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`; workers
inherit the driver's environment. Joining a cluster through `RAY_ADDRESS` never turns auth on by
itself but needs the cluster's token when the cluster has auth on. This module changes none of it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

import ray
from ray.runtime_context import RuntimeContext
from ray import serve


RAY_ENV_KEYS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


@contextlib.contextmanager
def fresh_auth_token_env() -> Iterator[str]:
    """A new local cluster's environment with token auth on and a fresh token; restored on exit.

    Unsets `RAY_ADDRESS` (always a cluster of one's own, never a shared one) and `RAY_AUTH_MODE`
    (left to `ray.init`, which switches this process's cached Ray config to token mode; setting it
    here would be too late for that cache, filled when ray was imported, and the driver would fail
    to authenticate to its own GCS), and puts a fresh token in `RAY_AUTH_TOKEN`, inherited by every
    Ray process started in the block, so nothing is written to `~/.ray`. Yields the token.
    """
    saved = {key: os.environ.get(key) for key in RAY_ENV_KEYS}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["RAY_AUTH_TOKEN"] = token = secrets.token_hex(32)
    try:
        yield token
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    include_dashboard: bool | None = None,
    **ray_init_kwargs,
) -> RuntimeContext:
    """Join the cluster at `RAY_ADDRESS` when set, else start a local one.

    num_cpus, num_gpus: logical resources of a new local cluster (None: Ray detects them).
    include_dashboard: start the dashboard with a new local cluster (None: Ray's default).
    ray_init_kwargs: passed to `ray.init` unchanged (e.g. `namespace`, `runtime_env`).
    Returns the runtime context of the connected driver.
    Raises ValueError when `RAY_ADDRESS` is set and cluster sizing was also given, because an
    existing cluster's resources can't be changed from a driver (Ray would raise deep inside
    `ray.init` otherwise).
    """
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None or num_gpus is not None or include_dashboard is not None:
            raise ValueError(
                f"init_ray: RAY_ADDRESS={address!r} is set, so this joins an existing cluster; "
                "num_cpus/num_gpus/include_dashboard only size a new local cluster, "
                "leave them unset"
            )
        ray.init(**ray_init_kwargs)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=include_dashboard,
            **ray_init_kwargs,
        )
    return ray.get_runtime_context()


def shutdown_ray(shutdown_serve: bool = True) -> None:
    """Shut Serve down (all applications, controller, proxies), then disconnect from Ray.

    A local cluster started by `init_ray` stops with it; a joined cluster keeps running. Serve's
    controller is detached, so its applications outlive the driver unless shut down here; on a
    shared cluster whose other Serve applications must survive, pass `shutdown_serve=False` and
    remove your own application with `serve.delete(name)`. Safe to call when Ray or Serve is not
    running.
    """
    if shutdown_serve and ray.is_initialized():
        serve.shutdown()
    ray.shutdown()


@contextlib.contextmanager
def submitted_job_connection() -> Iterator[bool]:
    """Inside a submitted job (`RAY_ADDRESS` set), stay connected to its cluster for the block.

    Yields whether it connected. `mmrlhf train` runs its single-process stages in the job's
    driver; connected, their Ray metrics (stage times) reach the cluster's metrics agent, and the
    RL stage reuses the connection. Outside a job it does nothing: a local cluster is only worth
    starting for the RL stage. On exit it disconnects and leaves Serve running (the cluster is
    shared).
    """
    if not os.environ.get("RAY_ADDRESS"):
        yield False
        return
    init_ray()
    try:
        yield True
    finally:
        shutdown_ray(shutdown_serve=False)
