"""Shared fixtures: one real local Ray cluster for the tests that ask for it.

Token auth: Ray 2.60's `ray.init()` turns token authentication on for a new local cluster when
`RAY_AUTH_MODE` is unset, sets `RAY_AUTH_MODE=token` in this process for good and, when no token
exists, writes one to `~/.ray/auth_token`. The fixture keeps auth on, as in production, but hands
Ray a fresh per-session token through `RAY_AUTH_TOKEN` (inherited by every Ray process), so
nothing is written to the home directory, and it restores the environment afterwards.
"""

from __future__ import annotations

import gc

import psutil
import pytest

from mmrlhf.cluster import fresh_auth_token_env, init_ray, shutdown_ray

EXIT_WAIT_S = 30.0


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (4 logical CPUs, no dashboard) for the whole session.

    Teardown shuts Serve and Ray down, then checks by pid that every process this cluster
    started (gcs_server, raylet, agents, workers) has exited; survivors are killed by pid and
    the teardown fails naming them.
    """
    driver = psutil.Process()
    preexisting = {p.pid for p in driver.children(recursive=True)}
    survivors = []
    with fresh_auth_token_env():
        try:
            context = init_ray(num_cpus=4, include_dashboard=False)
            yield context
        finally:
            # Snapshot at the end, so workers started during the tests are included too.
            ours = [p for p in driver.children(recursive=True) if p.pid not in preexisting]
            shutdown_ray()
            _, alive = psutil.wait_procs(ours, timeout=EXIT_WAIT_S)
            for process in alive:
                try:
                    survivors.append(f"{process.pid} ({process.name()})")
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
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
