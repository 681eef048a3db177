"""Shared fixtures: one real local Ray cluster for the tests that ask for it.

Token auth: Ray 2.60's `ray.init()` turns token authentication on for a new local cluster when
`RAY_AUTH_MODE` is unset, sets `RAY_AUTH_MODE=token` in this process for good and, when no token
exists, writes one to `~/.ray/auth_token`. The fixture keeps auth on, as in production, but hands
Ray a fresh per-session token through `RAY_AUTH_TOKEN` (inherited by every Ray process), so
nothing is written to the home directory, and it restores the environment afterwards.
"""

from __future__ import annotations

import gc
import os
import secrets

import psutil
import pytest

from mmrlhf.cluster import init_ray, shutdown_ray

RAY_ENV_KEYS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
EXIT_WAIT_S = 30.0


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (4 logical CPUs, no dashboard) for the whole session.

    Teardown shuts Serve and Ray down, then checks by pid that every process this cluster
    started (gcs_server, raylet, agents, workers) has exited; survivors are killed by pid and
    the teardown fails naming them.
    """
    saved_env = {key: os.environ.get(key) for key in RAY_ENV_KEYS}
    os.environ.pop("RAY_ADDRESS", None)  # always a cluster of our own, never a shared one
    # Leave the mode to ray.init: it switches this process's cached Ray config to token mode.
    # Setting RAY_AUTH_MODE here instead would be too late for that cache (filled when ray was
    # imported), and the driver would then fail to authenticate to its own GCS.
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    driver = psutil.Process()
    preexisting = {p.pid for p in driver.children(recursive=True)}
    try:
        context = init_ray(num_cpus=4, include_dashboard=False)
        yield context
    finally:
        # Snapshot at the end, so workers started during the tests are included too.
        ours = [p for p in driver.children(recursive=True) if p.pid not in preexisting]
        shutdown_ray()
        _, alive = psutil.wait_procs(ours, timeout=EXIT_WAIT_S)
        survivors = []
        for process in alive:
            try:
                survivors.append(f"{process.pid} ({process.name()})")
                process.kill()
            except psutil.NoSuchProcess:
                pass
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert not survivors, f"ray_cluster teardown: still alive after shutdown: {survivors}"


class PickleTrap:
    """Unpickling this object creates the file ``path``: proof that a loader ran pickle code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def pickle_payload(tmp_path):
    """``(sentinel, trap)``: a pickle holding ``trap`` creates ``sentinel`` when it is unpickled."""
    sentinel = tmp_path / "unpickled"
    return sentinel, PickleTrap(sentinel)


def pytest_unconfigure(config):
    """Leave the objects of the finished session out of the interpreter's final garbage collection.

    Measured here: after the whole suite (Ray, Serve handles, DeepSpeed in one process) the
    collection that runs at interpreter exit spun for minutes after every test had passed and
    every Ray process had exited; with ``gc.freeze()`` the process exits in seconds. The
    process's memory goes back to the OS either way.
    """
    gc.freeze()
