"""benchmarks/loopback.py: two Ray nodes on loopback addresses with token auth, a driver joins
them and runs a task on each, and the teardown leaves none of the script's processes behind.
Run in a child process: the script makes itself the subreaper and kills all its descendants."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import BENCH

SCRIPT = """
import json, subprocess, sys
import psutil
from loopback import OthersLoad, adopt_orphans, loopback_cluster
adopt_orphans()
with OthersLoad() as load:
    with loopback_cluster(["127.0.0.1", "127.0.0.2"], 1, {"rollout": 1}) as env:
        driver = '''
import json, ray
ray.init()
where = ray.remote(lambda: ray.get_runtime_context().get_node_id())
ids = ray.get([where.options(resources={"rollout": 1}, scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in ray.nodes()])
print("NODES " + json.dumps({"ips": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]), "ran_on": len(set(ids))}))
'''
        out = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=300)
        nodes = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("NODES "))[6:])
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        refused = subprocess.run([sys.executable, "-c", "import ray; ray.init()"], env=no_token,
                                 capture_output=True, text=True, timeout=300).returncode != 0
    others = load.cores(0.0, 1e12)
print("RESULT " + json.dumps(nodes | {"refused": refused, "left": len(psutil.Process().children(recursive=True)),
                                      "others": others}))
"""


def test_two_loopback_nodes_take_a_task_each_refuse_no_token_and_leave_nothing_behind():
    env = {**os.environ, "PYTHONPATH": f"{BENCH}{os.pathsep}{BENCH.parent}"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=BENCH, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert len(result["ips"]) == 2 and "127.0.0.2" in result["ips"]
    assert result["ran_on"] == 2  # one task pinned to each node ran there
    assert result["refused"]  # token auth is on: a driver without the token cannot join
    assert result["left"] == 0
    assert 0 <= result["others"] <= os.cpu_count()
