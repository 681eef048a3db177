"""Asynchronous mode on a real local Ray cluster (tiny presets, PPO, ZeRO-2, Serve rewards).

With `rl.asynchronous` the rollout workers generate the batch of step s+1 while the learner group
updates on step s, so that batch comes from policy version s while the learner is at s+1 (lag 1),
and PPO reweights its tokens by truncated importance weights. After a checkpointed step the loop
does not overlap, so 2 steps + `resume` + 1 step equal 3 steps in one go.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.rl import run_rl

from .conftest import clone_run

ASYNC = ["rl.asynchronous=true", "rl.max_policy_lag=1", "rl.checkpoint_every=2"]


def test_async_generation_runs_one_version_behind_and_resumes_exactly(ray_cluster, tiny_run, tmp_path):
    whole = clone_run(tiny_run, tmp_path / "whole", [*ASYNC, "rl.steps=3"])
    history = run_rl(whole)

    # step 1 was generated during step 0's update; step 2 follows the checkpoint after step 1
    assert [m["rollout/policy_lag"] for m in history] == [0.0, 1.0, 0.0]
    lagged, fresh = history[1]["rollout/logprob_mismatch"], history[0]["rollout/logprob_mismatch"]
    assert lagged > 100 * fresh  # behaviour log-probs of version 0, learner at version 1
    assert history[1]["ppo/is_weight_mean"] != pytest.approx(1.0, abs=1e-6)
    ledger = [json.loads(line) for line in RunPaths(whole.run_dir).rl_consumed.read_text().splitlines()]
    prompts = [p for row in ledger for p in set(row["prompt_ids"])]
    assert len(prompts) == len(set(prompts)) == 3 * whole.rl.prompts_per_step  # none repeated, none skipped

    parts = clone_run(tiny_run, tmp_path / "parts", [*ASYNC, "rl.steps=2"])
    run_rl(parts)
    resumed = run_rl(dataclasses.replace(parts, rl=dataclasses.replace(parts.rl, steps=3)), resume=True)
    state_a, state_b = (json.loads((RunPaths(c.run_dir).rl_checkpoints / "step_3" / "state.json").read_text())
                        for c in (whole, parts))
    assert state_a["weights_sha256"] == state_b["weights_sha256"]
    keep = ("ppo/", "learner/", "rollout/reward", "rollout/kl", "rollout/policy_lag")
    assert {k: v for k, v in history[2].items() if k.startswith(keep)} == \
           {k: v for k, v in resumed[0].items() if k.startswith(keep)}

