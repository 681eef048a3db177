"""Synchronous vs asynchronous RL steps, side by side: seconds per step and samples per second.

Runs the RL stage twice from the same SFT policy and reward model, once with
``rl.asynchronous=false`` and once with ``rl.asynchronous=true`` (generation of the next batch
overlapping the update), each in a copy of ``--run-dir`` without its RL outputs, and prints the
mean step time (the first step, which warms up, left out), samples/s, the sync/async ratio and
the last steps' rollout reward and gold score, with the machine it ran on.

    python benchmarks/async_overlap.py --run-dir runs/digits [--steps 8] [--config jobs/digits.yaml] [key=value ...]

Needs a run directory where ``mmrlhf reward train`` has run (``mmrlhf train`` does). The overlap
only pays where rollout workers and learner ranks have cores (or GPUs) of their own; on a
2-core machine they share the same two.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from mmrlhf.config import load_config
from mmrlhf.stages.rl import run_rl


def run_mode(args: argparse.Namespace, asynchronous: bool) -> tuple[list[dict[str, float]], float]:
    """The RL stage in a fresh copy of the run directory; returns (per-step metrics, wall seconds)."""
    run_dir = Path(args.root) / ("async" if asynchronous else "sync")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(args.run_dir, run_dir, ignore=shutil.ignore_patterns("rl", "eval", "tensorboard"))
    cfg = load_config(args.config, [*args.overrides, f"run_dir={run_dir}", f"rl.steps={args.steps}",
                                    f"rl.asynchronous={str(asynchronous).lower()}",
                                    f"rl.max_policy_lag={int(asynchronous)}", f"rl.checkpoint_every={args.steps}"])
    start = time.perf_counter()
    history = run_rl(cfg)
    return history, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a run directory with an SFT policy and a reward model")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--config", default=None)
    parser.add_argument("--root", default="runs/bench_async", help="parent folder of the two copies")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    rows = {}
    for asynchronous in (False, True):
        history, wall = run_mode(args, asynchronous)
        steady = [m["time/step_seconds"] for m in history[1:]]
        rows["async" if asynchronous else "sync"] = (
            statistics.mean(steady), statistics.mean(m["rollout/samples_per_s"] for m in history[1:]), wall,
            statistics.mean(m["rollout/reward"] for m in history[-3:]),
            statistics.mean(m.get("rollout/gold", float("nan")) for m in history[-3:]))

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {args.steps} RL steps per mode")
    print(f"{'mode':>6} {'s/step':>7} {'samples/s':>10} {'wall s':>7} {'reward':>7} {'gold':>6}  (last 3 steps)")
    for mode, (step_s, rate, wall, reward, gold) in rows.items():
        print(f"{mode:>6} {step_s:7.2f} {rate:10.2f} {wall:7.1f} {reward:7.3f} {gold:6.3f}")
    print(f"step time sync / async: {rows['sync'][0] / rows['async'][0]:.2f}x")


if __name__ == "__main__":
    main()
