"""The RL loop, one screen long: generate → score → experience → update → weight sync.

The driver holds the control flow; the rollout workers, the Serve reward deployment and the
learner group do the compute (the single-controller design of veRL / OpenRLHF).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch

from mmrlhf.config import RLConfig
from mmrlhf.types import Rollout


def rollout_metrics(rollout: Rollout, policy_version: int) -> dict[str, float]:
    """Reward statistics of a scored rollout.

    ``rollout/all_alike``: share of prompts whose scored samples all got the same score (no
    learning signal among them). ``rollout/policy_lag``: versions between the newest policy
    and the oldest one that generated a row.
    """
    scores = rollout.scores
    scored = torch.isfinite(scores)
    groups: dict[str, list[float]] = defaultdict(list)
    for pid, score, ok in zip(rollout.prompt_ids, scores.tolist(), scored.tolist()):
        if ok:
            groups[pid].append(score)
    alike = [max(g) - min(g) < 1e-6 for g in groups.values() if len(g) > 1]
    return {
        "rollout/reward": float(scores[scored].mean()) if scored.any() else float("nan"),
        "rollout/all_alike": sum(alike) / max(len(alike), 1),
        "rollout/truncated": sum(r == "length" for r in rollout.finish_reason) / len(rollout),
        "rollout/policy_lag": float(policy_version - int(rollout.policy_version.min())),
    }


def train_loop(rl: RLConfig, prompts, rollout_group, learner_group, weight_sync, kl_controller,
               on_step: Callable[[int, dict[str, float], Rollout], None], start_step: int = 0,
               checkpoint: Callable[[int], None] | None = None) -> None:
    """Run PPO steps ``start_step .. rl.steps-1``; ``on_step(step, metrics, rollout)`` logs each.

    ``checkpoint(steps_done)`` runs after every ``rl.checkpoint_every`` steps and after the last.
    """
    for step in range(start_step, rl.steps):
        start = time.perf_counter()
        rollout = rollout_group.generate(prompts.next_batch(), rl.samples_per_prompt, step)  # scored by Serve
        metrics = rollout_metrics(rollout, policy_version=step)
        metrics |= learner_group.make_experience(rollout, kl_controller.value)  # old/ref log-probs, values, GAE
        metrics |= learner_group.update()                                         # PPO epochs over minibatches
        metrics |= weight_sync.publish(learner_group, version=step + 1)           # rollout workers load v+1
        kl_controller.update(metrics["rollout/kl"], len(rollout))
        metrics["time/step_seconds"] = time.perf_counter() - start
        metrics["rollout/samples_per_s"] = len(rollout) / metrics["time/step_seconds"]
        on_step(step, metrics, rollout)
        done = step + 1
        if checkpoint is not None and (done == rl.steps or rl.checkpoint_every and done % rl.checkpoint_every == 0):
            checkpoint(done)                                                      # a resume continues at `done`
