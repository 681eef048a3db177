"""Two Ray nodes on loopback addresses of this machine, and the CPU load of everyone else.

``loopback_cluster(...)`` starts a head (``ray start --head --node-ip-address=127.0.0.1``) and
one more node per extra address (``ray start --address=127.0.0.1:PORT
--node-ip-address=127.0.0.2``, ...), token auth on (Ray 2.60: ``RAY_AUTH_MODE=token`` and the
token in ``RAY_AUTH_TOKEN``, inherited by every process the nodes start, as
``tests/ops/test_ray_job.py`` does), its own temp dir and free ports so it never meets another
cluster of this machine, and yields the environment a driver needs to join it (``RAY_ADDRESS``
and the token). On exit it kills, by pid, every process this script started: the script makes
itself the child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux), so the daemons ``ray start``
leaves behind stay its descendants, and only those are signalled (never ``ray stop``).

``remote_call_seconds(env)`` times, from a driver on the head, a call to an actor on another
node against one on the head. ``OthersLoad`` samples ``/proc``: the cores busy with processes that are not this script's
descendants (the machine's other users), averaged over a time window.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil

PR_SET_CHILD_SUBREAPER = 36
KILL_GRACE_S = 15.0


def adopt_orphans() -> None:
    """Make this process the child subreaper: orphaned descendants (the daemons of ``ray
    start``) are re-parented to it, not to init. Raises OSError when the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def stop_descendants() -> list[str]:
    """Terminate, then kill, every descendant of this process; returns those still alive."""
    for signal_them in (psutil.Process.terminate, psutil.Process.kill):
        procs = psutil.Process().children(recursive=True)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):  # exited meanwhile: nothing to stop
                signal_them(proc)
        psutil.wait_procs(procs, timeout=KILL_GRACE_S)
    return [f"{p.pid} ({p.name()})" for p in psutil.Process().children(recursive=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict[str, str], temp_dir: str) -> None:
    command = [str(Path(sys.executable).parent / "ray"), "start", *args, f"--temp-dir={temp_dir}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", "--disable-usage-stats"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def loopback_cluster(addresses: list[str], num_cpus: int, resources: dict[str, float],
                     object_store_bytes: int = 300 * 2**20) -> Iterator[dict[str, str]]:
    """One Ray node per loopback address (the first is the head), each with ``num_cpus`` logical
    CPUs and the custom ``resources``; yields the driver's environment (``os.environ`` without
    ``RAY_*``, plus ``RAY_ADDRESS``, ``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``).

    Call :func:`adopt_orphans` first. Raises RuntimeError when a node fails to start or a
    process survives the teardown (names them)."""
    temp_dir = tempfile.mkdtemp(prefix="sm-", dir="/tmp")  # Unix socket paths are capped at 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = _free_port()
    common = [f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
              f"--object-store-memory={object_store_bytes}"]
    try:
        _ray_start(["--head", f"--node-ip-address={addresses[0]}", f"--port={port}", "--include-dashboard=false",
                    f"--ray-client-server-port={_free_port()}", *common], env, temp_dir)
        for address in addresses[1:]:
            _ray_start([f"--address={addresses[0]}:{port}", f"--node-ip-address={address}", *common], env, temp_dir)
        yield env | {"RAY_ADDRESS": f"{addresses[0]}:{port}"}
    finally:
        survivors = stop_descendants()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"loopback_cluster teardown: still alive after kill: {survivors}")


REMOTE_CALL = """
import json, statistics, time
import numpy as np, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
class Echo:
    def echo(self, payload):
        return payload

ray.init()
head = ray.get_runtime_context().get_node_id()
other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
payload = np.zeros(NBYTES, dtype=np.uint8)
medians = []
for node in (head, other):
    actor = Echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    ray.get(actor.echo.remote(payload))
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        ray.get(actor.echo.remote(payload))
        times.append(time.perf_counter() - start)
    medians.append(statistics.median(times))
print("REMOTE " + json.dumps(medians))
"""


def remote_call_seconds(env: dict[str, str], nbytes: int = 200_000, repeats: int = 30) -> tuple[float, float]:
    """``(same node, other node)``: median seconds of a Ray actor call that sends ``nbytes`` and
    gets them back, from a driver on the head (joining through ``env``) to an actor on the head
    and to one on another node. Raises RuntimeError when the driver fails."""
    script = REMOTE_CALL.replace("NBYTES", str(nbytes)).replace("REPEATS", str(repeats))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REMOTE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"remote_call_seconds: driver exited with {done.returncode}:\n{done.stderr[-3000:]}")
    same, other = json.loads(lines[-1][len("REMOTE "):])
    return same, other


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> int:
    """Clock ticks all CPUs spent busy since boot (``/proc/stat``: all but idle and iowait); ticks of
    ``os.sysconf("SC_CLK_TCK")`` per second."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


class OthersLoad:
    """Cores busy with other users' processes (not this process or its descendants), sampled
    every ``period_s`` in a background thread: ``cores(start, end)`` averages them over a window
    of ``time.time()`` seconds. Linux only (``/proc``)."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s, self.samples = period_s, []  # (time, cores busy with others over the last period)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "OthersLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _ours(self) -> dict[int, int]:
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        return {p.pid: _cpu_ticks(p.pid) for p in procs}

    def _run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        last_time, last_busy, last_ours = time.time(), busy_ticks(), self._ours()
        while not self._stop.wait(self.period_s):
            now, busy, ours = time.time(), busy_ticks(), self._ours()
            mine = sum(ticks - last_ours.get(pid, 0) for pid, ticks in ours.items())
            self.samples.append((now, max(0.0, (busy - last_busy - mine) / hz / (now - last_time))))
            last_time, last_busy, last_ours = now, busy, ours

    def wait_quiet(self, below: float, for_s: float, timeout_s: float) -> bool:
        """Wait until others kept fewer than ``below`` cores busy on average over the last
        ``for_s`` seconds, at most ``timeout_s``; whether they did."""
        start = time.time()
        while time.time() - start < timeout_s:
            time.sleep(self.period_s)
            now = time.time()
            recent = [cores for t, cores in self.samples if t >= now - for_s]
            if now - start >= for_s and recent and sum(recent) / len(recent) < below:
                return True
        return False

    def cores(self, start: float, end: float) -> float:
        """Mean cores busy with others between ``start`` and ``end`` (epoch seconds), the window
        widened by one period on each side so that it holds a sample.
        Raises ValueError when no sample falls in it."""
        values = [cores for t, cores in self.samples if start - self.period_s <= t <= end + self.period_s]
        if not values:
            raise ValueError(f"OthersLoad: no sample between {start:.1f} and {end:.1f}")
        return sum(values) / len(values)
