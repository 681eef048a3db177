"""RLHF vs SFT on the digits default, over several seeds: mean ± std of the exact-match gain.

Runs the whole recipe (`mmrlhf train`) once per seed, each in its own run directory, and
prints the SFT (baseline) and RLHF held-out metrics side by side, the per-seed gains and
their mean ± sample standard deviation, with the machine it ran on.

    python benchmarks/rl_gain.py --seeds 0 1 2 [--config jobs/digits.yaml] [key=value ...]

Each seed changes the data draw, the initial weights and the sampling (``seed`` and
``data.seed``). Takes about one default run (≈7 minutes on a 2-core CPU) per seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from mmrlhf.config import load_config
from mmrlhf.stages.train import run_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=None)
    parser.add_argument("--root", default="runs/bench", help="parent folder of the per-seed run directories")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"data.seed={seed}",
                                        f"run_dir={args.root}/seed{seed}"])
        start = time.perf_counter()
        before, after = run_train(cfg)
        rows.append((seed, before, after, time.perf_counter() - start))

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{'seed':>4} {'SFT EM':>8} {'RLHF EM':>8} {'gain':>7} {'SFT gold':>9} {'RLHF gold':>10} {'minutes':>8}")
    for seed, before, after, seconds in rows:
        print(f"{seed:>4} {before['exact_match']:8.1f} {after['exact_match']:8.1f} "
              f"{after['exact_match'] - before['exact_match']:+7.1f} {before['gold']:9.3f} {after['gold']:10.3f} "
              f"{seconds / 60:8.1f}")
    gains = [after["exact_match"] - before["exact_match"] for _, before, after, _ in rows]
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"exact-match gain over SFT: {statistics.mean(gains):+.1f} ± {spread:.1f} points "
          f"(mean ± std over {len(gains)} seeds)")


if __name__ == "__main__":
    main()
