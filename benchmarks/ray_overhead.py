"""Ray's overhead: the RL loop with 1 rollout worker, 1 learner rank and Serve vs the same code in one process.

Both contenders run the same steps of critic-free PPO (the ``mmrlhf PPO`` settings of
``vs_trl.py``: GRPO advantages, one epoch, the batch as one minibatch, vision tower frozen) on the
same prompts with the gold-score reward, each in a fresh process per round, rounds alternating
after a warm-up (``vs_trl.measure``):
- ``Ray``: ``mmrlhf_rl.py``, the RL stage as users run it, with one rollout worker actor, one
  DeepSpeed learner rank actor and the reward sources on a Serve deployment;
- ``one process``: ``mmrlhf_one_process.py``, the controller's loop over the same rollout
  worker, reward sources and learner rank classes as plain objects.
Neither side overlaps phases (synchronous mode), and each part has one torch thread in both, so
the difference per step is what the distribution costs: dispatch, serialisation through the
object store, the Serve hop and weight sync through shared memory.

    python benchmarks/ray_overhead.py --run-dir runs/digits [--rounds 3] [--steps 12] [--json out.json]
    python benchmarks/ray_overhead.py --quick      # a tiny run built here, 1 round of 3 steps: a smoke test
"""

from __future__ import annotations

import common
from vs_trl import CONTENDERS as VS_TRL
from vs_trl import PHASES, arguments, measure

ONE_OF_EACH = ["rl.rollout_workers=1", "rl.learner_ranks=1"]
PPO = VS_TRL["mmrlhf PPO"][1:]  # "--set" and the PPO settings
RAY = "Ray: 1 rollout worker, 1 learner rank, Serve"
ONE = "one process"
CONTENDERS = {RAY: ["mmrlhf_rl.py", *PPO, *ONE_OF_EACH], ONE: ["mmrlhf_one_process.py", *PPO, *ONE_OF_EACH]}


def main() -> None:
    args = arguments(__doc__).parse_args()
    med = measure(args, CONTENDERS)
    rows = [[name, m["completions/s"], m["time/step_seconds"], *(m[p] for p in PHASES), m["startup_s"]]
            for name, m in med.items()]
    notes = [f"{args.prompts} prompts x {args.samples} samples per step, {args.max_new_tokens} new tokens, {args.steps} "
             f"steps of critic-free PPO, gold-score reward; median of {args.rounds} alternating rounds after "
             f"{args.warmup} warm-up round(s), each run in a fresh process; phases: median seconds per step."]
    if RAY in med and ONE in med:
        ray_step, one_step = med[RAY]["time/step_seconds"], med[ONE]["time/step_seconds"]
        notes.append(f"Ray costs {ray_step - one_step:+.3f} s per step ({ray_step / one_step:.2f}x the one-process "
                     f"step time); per phase: " + ", ".join(
                         f"{p.removeprefix('time/')} {med[RAY][p] - med[ONE][p]:+.3f}" for p in PHASES))
        notes.append(f"start-up: Ray {med[RAY]['startup_s']:.1f} s, one process {med[ONE]['startup_s']:.1f} s")
    common.report("Ray overhead: the same RL loop distributed (1 worker, 1 rank, Serve) vs in one process",
                  ["contender", "completions/s", "step s", "rollout s", "generate s", "score s", "experience s",
                   "update s", "sync s", "start-up s"], rows, notes, args.json)


if __name__ == "__main__":
    main()
