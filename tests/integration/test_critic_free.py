"""Critic-free PPO (GRPO-style advantages, KL as a loss term) and DAPO dynamic sampling on real Ray.

`tiny` presets, the session's `tiny_run` directory; Serve reward, 2 rollout workers, DeepSpeed.
"""

from __future__ import annotations

import dataclasses

import pytest
import ray
import torch

from mmrlhf.controller import train_loop
from mmrlhf.metrics import PHASES
from mmrlhf.rollout.dynamic import informative_rows
from mmrlhf.stages.rl import rl_system
from mmrlhf.sync import state_dict_hash
from tests.integration.conftest import first_update

GRPO = {"algorithm": "ppo", "advantage_estimator": "grpo", "kl_coef": 0.05, "clip_eps_high": 0.28}


def test_grpo_update_is_the_same_when_the_batch_is_split_across_ranks(ray_cluster, tiny_run):
    cfg = tiny_run
    with rl_system(cfg) as system:
        rollout = system.rollout_group.generate(system.prompts.next_batch(), cfg.rl.samples_per_prompt, step=0)
    (exp1, m1, w1), (exp2, m2, w2) = (first_update(cfg, rollout, **GRPO, learner_ranks=ranks) for ranks in (1, 2))
    # one epoch on fresh samples reuses the behaviour log-probs: learner and sampler agree exactly
    assert exp1["rollout/logprob_mismatch"] == 0.0 and exp1["rollout/kl"] == pytest.approx(exp2["rollout/kl"])
    assert m1["learner/loss"] != 0
    assert m2["learner/loss"] == pytest.approx(m1["learner/loss"], rel=1e-4, abs=1e-6)
    assert "value/loss" not in m1 and "ppo/kl_loss" in m1  # no value head; the KL leash is a loss term
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)


def test_grpo_with_dynamic_sampling_trains_only_on_informative_groups_and_times_every_phase(
        ray_cluster, tiny_run):
    cfg = dataclasses.replace(tiny_run, rl=dataclasses.replace(tiny_run.rl, **GRPO, dynamic_sampling=True,
                                                                 dynamic_sampling_tries=2))
    steps = []
    with rl_system(cfg) as system:
        train_loop(cfg.rl, system.prompts, system.rollout_group, system.learner_group, system.weight_sync,
                   system.kl_controller, lambda step, metrics, rollout: steps.append((metrics, rollout)))
        learner_hash = state_dict_hash(ray.get(system.learner_group.weights()))
        assert system.rollout_group.weights_hashes() == [learner_hash] * cfg.rl.rollout_workers
    assert len(steps) == cfg.rl.steps
    for metrics, rollout in steps:
        assert set(PHASES) <= set(metrics)
        assert metrics["time/step_seconds"] == pytest.approx(sum(metrics[k] for k in PHASES))
        assert 0 <= metrics["rollout/dynamic_tries"] <= 2
        if not metrics["rollout/skipped_update"]:
            assert bool(informative_rows(rollout).all())  # never an all-alike group in the update
            assert len(rollout) % cfg.rl.learner_ranks == 0
