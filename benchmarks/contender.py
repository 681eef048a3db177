"""What the contenders of ``benchmarks/vs_trl.py`` share: arguments, prompts, and the result line.

A contender is a script run in a fresh process per measurement (so start-up includes the
imports) that trains ``--steps`` steps on the run directory's SFT policy and prints one line
``CONTENDER {json}`` (:func:`emit`): start-up seconds (process launch to the first step's
start) and the CPU seconds the whole machine was busy meanwhile (:class:`BusyClock`), and per
step its wall seconds, phase seconds and generated tokens.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from loopback import busy_ticks

MARK = "CONTENDER "


def busy_cpu_seconds() -> float:
    """Seconds all of this machine's cores have been busy since boot, summed over cores
    (:func:`loopback.busy_ticks`)."""
    return busy_ticks() / os.sysconf("SC_CLK_TCK")


class BusyClock:
    """Machine-wide busy CPU seconds (:func:`busy_cpu_seconds`, every process, Ray's included),
    sampled every ``period_s`` seconds by a daemon thread from construction on.

    ``busy_between(t0, t1)``: CPU seconds busy between epoch times ``t0`` and ``t1``, linearly
    interpolated between samples; ``t0`` before the first sample counts from the first sample.
    """

    def __init__(self, period_s: float = 0.1) -> None:
        self._times, self._busy = [time.time()], [busy_cpu_seconds()]
        self._period_s = period_s
        threading.Thread(target=self._sample, daemon=True, name="busy-clock").start()

    def _sample(self) -> None:
        while True:
            time.sleep(self._period_s)
            busy = busy_cpu_seconds()  # read before the time, as at construction: appended together
            self._times.append(time.time())
            self._busy.append(busy)

    def _at(self, t: float) -> float:
        times, busy = self._times[:], self._busy[:len(self._times)]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return busy[0]
        if i >= len(times):
            return busy[-1]
        share = (t - times[i - 1]) / (times[i] - times[i - 1])
        return busy[i - 1] + share * (busy[i] - busy[i - 1])

    def busy_between(self, t0: float, t1: float) -> float:
        """CPU seconds busy from ``t0`` to ``t1`` (epoch seconds, ``t0 <= t1``)."""
        return self._at(t1) - self._at(t0)


CLOCK = BusyClock()  # started when a contender imports this module, right after its launch time is taken


def arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every contender takes (the run directory, the batch shape, the steps)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="run directory with an SFT policy (prepared by vs_trl.py)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (one-process contenders)")
    parser.add_argument("--scratch", type=Path, required=True, help="a folder the contender may write")
    parser.add_argument("--launched-at", type=float, default=None, help="epoch seconds the driver launched us")
    parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides (the project's loop)")
    return parser


def prompt_batches(args: argparse.Namespace):
    """``(cfg, tables)``: the run's config and the ``--steps`` prompt batches (pyarrow tables of
    ``--prompts`` rows) that :class:`mmrlhf.rollout.prompts.PromptSource` hands the RL stage, in order."""
    import pyarrow as pa

    from mmrlhf.config import load_config
    from mmrlhf.rollout.prompts import PromptSource
    from mmrlhf.stages.data import load_split

    cfg = load_config(Path(args.run_dir) / "config.yaml", [f"run_dir={args.run_dir}"])
    source = PromptSource(load_split(cfg, "feedback"), args.prompts, cfg.seed)
    return cfg, [pa.Table.from_pylist(source.next_batch()) for _ in range(args.steps)]


GOLD_ONLY = 'reward.sources=[{name: "mmrlhf.data.digits:gold_reward", weight: 1.0}]'
PHASES = ("time/step_seconds", "time/rollout", "time/generate", "time/score", "time/experience", "time/update",
          "time/sync")


def project_config(args: argparse.Namespace):
    """The project's contenders' config: a copy of the run directory under ``--scratch`` (its SFT
    policy and data, no RL results), the gold-score reward as the only source (the same reward as
    TRL's side), the batch shape and steps of the arguments, no checkpoints, then ``--set``."""
    import shutil

    from mmrlhf.config import load_config

    run = Path(args.scratch) / "run"
    shutil.copytree(args.run_dir, run, ignore=shutil.ignore_patterns("rl", "eval", "tensorboard"))
    return load_config(run / "config.yaml", [
        f"run_dir={run}", GOLD_ONLY, f"rl.steps={args.steps}", f"rl.prompts_per_step={args.prompts}",
        f"rl.samples_per_prompt={args.samples}", f"rl.max_new_tokens={args.max_new_tokens}", "rl.checkpoint_every=0",
        *args.set])


def emit_history(launched: float, first_step_start: float, history: list[dict[str, float]],
                 args: argparse.Namespace, startup_parts: dict[str, float]) -> None:
    """:func:`emit` for the project's loop: each step's ``PHASES`` metrics and generated tokens."""
    completions = args.prompts * args.samples
    steps = [{key: m[key] for key in PHASES if key in m} | {"tokens": m["rollout/response_tokens"] * completions}
             for m in history]
    emit(launched, first_step_start, steps, completions, startup_parts)


def emit(launched: float, first_step_start: float, steps: list[dict[str, Any]], completions: int,
         startup_parts: dict[str, float] | None = None) -> None:
    """Print the result line: ``startup_s``, ``startup_cpu_s`` (the machine's busy CPU seconds
    meanwhile), ``completions`` per step, the per-step metrics and the start-up's parts (seconds)
    where the contender knows them."""
    print(MARK + json.dumps({"startup_s": first_step_start - launched,
                             "startup_cpu_s": CLOCK.busy_between(launched, first_step_start),
                             "completions": completions, "steps": steps,
                             "startup_parts": startup_parts or {}}), flush=True)


def parse(output: str) -> dict[str, Any]:
    """The result of a contender's output (the last ``CONTENDER`` line). Raises ValueError if none."""
    lines = [line for line in output.splitlines() if line.startswith(MARK)]
    if not lines:
        raise ValueError("contender printed no result line; its output ends with:\n" + output[-2000:])
    return json.loads(lines[-1][len(MARK):])
