"""The RL loop against the peer: the project's distributed loop vs TRL's ``GRPOTrainer``, one machine.

Both sides train the same SFT policy on the same prompts (in the same order), with the same
batch (``--prompts`` × ``--samples``), group size, generation length, temperature, learning rate,
one optimiser step per batch, the vision tower frozen and the same rule-based reward (the digits
gold score; the learned reward model's cost is measured by ``reward_serving.py``). Each contender
runs in a fresh process per round (``trl_grpo.py``, ``mmrlhf_rl.py``), rounds alternate
(TRL, ours, ours, TRL, ...), the first round is a warm-up. Per run: completions/s and tokens/s
are the median over its steps after the first (which pays one-time costs); start-up is from the
process launch to the first step's start. The table gives each contender's median over rounds,
its ratio to TRL, and its phase split (seconds per step).

Contenders of the project (``--set`` overrides on the run's config):
- ``mmrlhf PPO``: critic-free PPO with GRPO advantages, one epoch over the batch as one
  minibatch, no reference model (``kl_coef=0``): TRL's ``GRPOTrainer`` defaults (``beta=0``).
- ``mmrlhf SAC``: the default algorithm, one SAC step on a minibatch of the batch's size per step.

    python benchmarks/vs_trl.py --run-dir runs/digits [--rounds 3] [--steps 12] [--json out.json]
    python benchmarks/vs_trl.py --quick      # a tiny run built here, 1 round of 3 steps: a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import contender
from rundir import prepared_run

HERE = Path(__file__).resolve().parent
GATE = 1.0
STARTUP_GATE = 15.0  # seconds from launch to the first step, on a warm environment (issue 14)
TRL = "TRL GRPOTrainer"
ONE_STEP = ["rl.ppo_epochs=1", "rl.sac_updates_per_step=1", "rl.freeze_vision_tower=true"]
CONTENDERS = {
    TRL: ["trl_grpo.py"],
    "mmrlhf PPO": ["mmrlhf_rl.py", "--set", "rl.algorithm=ppo", "rl.advantage_estimator=grpo", "rl.kl_coef=0", *ONE_STEP],
    "mmrlhf SAC": ["mmrlhf_rl.py", "--set", "rl.algorithm=sac", *ONE_STEP],
}
PHASES = ("time/rollout", "time/generate", "time/score", "time/experience", "time/update", "time/sync")


def run_contender(argv: list[str], run_dir: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """Run one contender in a fresh process; its parsed result (:func:`contender.parse`).

    Raises RuntimeError with the tail of its output when it fails."""
    batch = args.prompts * args.samples
    script, *rest = argv
    if rest:  # the project's contender: its minibatch is the whole batch
        rest = [*rest, f"rl.minibatch_size={batch}"]
    scratch.mkdir(parents=True)
    command = [sys.executable, script, "--run-dir", str(run_dir), "--scratch", str(scratch), "--steps", str(args.steps),
               "--prompts", str(args.prompts), "--samples", str(args.samples),
               "--max-new-tokens", str(args.max_new_tokens), "--launched-at", str(time.time()), *rest]
    done = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{output[-3000:]}")
    return contender.parse(output)


def summarise(result: dict) -> dict[str, float]:
    """One run's figures: completions/s and tokens/s (median over steps after the first), start-up, phases."""
    steps = result["steps"][1:] or result["steps"]
    figures = {"completions/s": statistics.median(result["completions"] / s["time/step_seconds"] for s in steps),
               "tokens/s": statistics.median(s["tokens"] / s["time/step_seconds"] for s in steps),
               "startup_s": result["startup_s"], "startup_cpu_s": result["startup_cpu_s"]}
    parts = {f"startup/{part}": seconds for part, seconds in result["startup_parts"].items()}
    return figures | parts | {p: statistics.median(s.get(p, 0.0) for s in steps) for p in ("time/step_seconds", *PHASES)}


def arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of a comparison of contenders (this script's and ``ray_overhead.py``'s)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run directory with an SFT policy (default: build a tiny one)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds, not counted")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=None, help="contender names to run (default: all)")
    parser.add_argument("--root", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="tiny run, 3 steps of 4 x 2, 1 round, no warm-up")
    parser.add_argument("--json", default=None)
    return parser


def measure(args: argparse.Namespace, contenders: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Run the contenders (``--only`` of them) in alternating rounds on the prepared run; each one's
    median over rounds of its :func:`summarise` figures. ``--quick`` shrinks everything first."""
    if args.quick:
        args.rounds, args.warmup, args.steps, args.prompts, args.samples, args.max_new_tokens = 1, 0, 3, 4, 2, 4
    names = args.only or list(contenders)
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        cfg = prepared_run(args.run_dir, Path(tmp) / "run", args.config)
        counter = iter(range(10_000))
        runs = {name: (lambda name=name: summarise(run_contender(
                    contenders[name], Path(cfg.run_dir), args, Path(tmp) / f"scratch{next(counter)}")))
                for name in names}
        values = common.alternating(runs, args.rounds, args.warmup)
    return {name: {key: statistics.median(v[key] for v in values[name]) for key in values[name][0]} for name in names}


def main() -> None:
    args = arguments(__doc__).parse_args()
    med = measure(args, CONTENDERS)
    base = med[TRL]["completions/s"] if TRL in med else float("nan")
    rows = [[name, m["completions/s"], m["tokens/s"], m["completions/s"] / base, m["startup_s"], m["time/step_seconds"],
             *(m[p] for p in PHASES)] for name, m in med.items()]
    ours = {name: m["completions/s"] / base for name, m in med.items() if name != TRL}
    notes = [f"{args.prompts} prompts x {args.samples} samples per step, {args.max_new_tokens} new tokens, {args.steps} "
             f"steps, one optimiser step per batch, vision tower frozen, gold-score reward on both sides; median of "
             f"{args.rounds} alternating rounds after {args.warmup} warm-up round(s), each run in a fresh process.",
             "start-up: process launch to the first step's start (s); phases: median seconds per step; TRL's "
             "'rollout' is its _generate_and_score_completions, its 'update' the rest of the step.",
             *(f"{name}: {ratio:.2f}x TRL's completions/s; gate >= {GATE}: {'met' if ratio >= GATE else 'missed'}"
               for name, ratio in ours.items())]
    splits = {name: {k.removeprefix("startup/"): v for k, v in m.items() if k.startswith("startup/")}
              for name, m in med.items()}
    notes += [f"{name} start-up split (s): " + ", ".join(f"{part} {sec:.1f}" for part, sec in split.items())
              for name, split in splits.items() if split]
    cores = os.cpu_count()
    notes += ["start-up CPU: the machine's busy CPU seconds from launch to the first step, every process (Ray's "
              "included): " + ", ".join(f"{name} {m['startup_cpu_s']:.1f}" for name, m in med.items())
              + f"; {STARTUP_GATE:g} s on these {cores} cores is at most {STARTUP_GATE * cores:g} CPU seconds.",
              *(f"{name}: start-up {m['startup_s']:.1f} s; gate <= {STARTUP_GATE:g} s: "
                f"{'met' if m['startup_s'] <= STARTUP_GATE else 'missed'}" for name, m in med.items() if name != TRL)]
    common.report("The RL loop vs TRL GRPOTrainer (same policy, prompts, batch, reward)",
                  ["contender", "completions/s", "tokens/s", "x TRL", "start-up s", "step s", "rollout s",
                   "generate s", "score s", "experience s", "update s", "sync s"], rows, notes, args.json)


if __name__ == "__main__":
    main()
