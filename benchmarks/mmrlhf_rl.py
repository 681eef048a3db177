"""Contender: the project's RL stage (:func:`mmrlhf.stages.rl.run_rl`) on the run's SFT policy.

Run by ``benchmarks/vs_trl.py``, one process per measurement; prints one JSON line (see
:func:`contender.emit`). The whole distributed loop: a local Ray cluster, rollout workers, the
Serve reward deployment, the DeepSpeed learner group and weight sync, with the reward sources
replaced by the rule-based digits gold score (``mmrlhf.data.digits:gold_reward``, weight 1: the
same reward as TRL's side) and ``--set key=value`` overrides on top (the algorithm, workers,
ranks, ...). Start-up is from the process launch to the first step's start, split into the
imports before the RL stage starts and the stage's ``time/startup/<part>`` metrics (Ray, inputs,
Serve, learners, rollout workers); a step's phases are the RL stage's ``time/*`` metrics.

    python benchmarks/mmrlhf_rl.py --run-dir RUN --scratch DIR --set rl.algorithm=ppo rl.advantage_estimator=grpo
"""

from __future__ import annotations

import time

LAUNCHED = time.time()  # before the heavy imports: they are part of the start-up

import contender  # noqa: E402


def main() -> None:
    args = contender.arguments(__doc__).parse_args()
    launched = args.launched_at or LAUNCHED

    from mmrlhf.stages.rl import run_rl

    cfg = contender.project_config(args)
    entered = time.time()
    history = run_rl(cfg, force=True)
    parts = {"imports": entered - launched} | {key.removeprefix("time/startup/"): value
                                               for key, value in history[0].items() if key.startswith("time/startup/")}
    contender.emit_history(launched, entered + history[0]["time/startup"], history, args, parts)


if __name__ == "__main__":
    main()
