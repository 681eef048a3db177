"""SAC end to end on a real local Ray cluster: Serve rewards, rollout workers, a ZeRO-3 learner group.

`tiny` presets. Two SAC steps with a checkpoint after each, then `resume` for a third: the
replay buffer (and α) come back from the checkpoint, so the third step sees three steps of rows
and ends with the same weights, replay buffers and metrics as three steps in one go.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from mmrlhf.models.policy import load_policy
from mmrlhf.stages.common import RunPaths, policy_path
from mmrlhf.stages.rl import run_rl

from .conftest import clone_run

SAC = ["rl.algorithm=sac", "rl.zero_stage=3", "rl.checkpoint_every=1", "rl.sac_updates_per_step=2"]


def test_sac_steps_under_zero3_sync_weights_and_resume_exactly_with_the_replay_buffer(ray_cluster, tiny_run, tmp_path):
    cfg = clone_run(tiny_run, tmp_path / "sac", [*SAC, "rl.steps=2"])
    rows = cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt
    history = run_rl(cfg)

    assert [m["step"] for m in history] == [0, 1]
    assert [m["replay/rows"] for m in history] == [rows, 2 * rows]
    for metrics in history:
        assert {"sac/actor_loss", "sac/critic_loss", "sac/q", "sac/kl_ref"} <= set(metrics)
        assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith(("sac/", "learner/")))
    assert history[1]["sac/q"] != 0.0  # the zero-initialised Q heads learnt from the first step
    # Step 1 was sampled by the workers after the weight sync of step 0 (gathered under ZeRO-3):
    # their behaviour log-probs equal the learner's.
    assert history[1]["sync/version"] == 2
    assert history[1]["rollout/logprob_mismatch"] < 1e-4
    sft = load_policy(str(policy_path(cfg, "sft")))[0].state_dict()
    tuned = load_policy(str(RunPaths(cfg.run_dir).rl_policy))[0].state_dict()
    assert sft.keys() == tuned.keys()
    assert any(not torch.equal(sft[k], tuned[k]) for k in sft)

    longer = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, steps=3))
    resumed = run_rl(longer, resume=True)
    assert [m["step"] for m in resumed] == [2]
    assert resumed[0]["replay/rows"] == 3 * rows

    whole = clone_run(tiny_run, tmp_path / "whole", [*SAC, "rl.steps=3"])
    uninterrupted = run_rl(whole)
    step_a, step_b = (RunPaths(c.run_dir).rl_checkpoints / "step_3" for c in (whole, cfg))
    state_a, state_b = (json.loads((step / "state.json").read_text()) for step in (step_a, step_b))
    assert state_a["weights_sha256"] == state_b["weights_sha256"]
    for rank in range(cfg.rl.learner_ranks):
        name = f"replay_rank{rank}.safetensors"
        assert (step_a / name).read_bytes() == (step_b / name).read_bytes()
    keep = ("sac/", "learner/", "replay/", "rollout/reward", "rollout/kl")
    assert {k: v for k, v in uninterrupted[2].items() if k.startswith(keep)} == \
           {k: v for k, v in resumed[0].items() if k.startswith(keep)}
