"""The tiny run directory shared by the integration tests: data, SFT policy, pairs, reward model.

Built once per session by the real stages with the `tiny` presets (jobs/tiny.yaml); tests that
write RL outputs work on a copy (`clone_run`).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import ray

from mmrlhf.config import RunConfig, load_config
from mmrlhf.stages.data import prepare_data
from mmrlhf.stages.feedback import run_feedback_simulation
from mmrlhf.stages.reward_train import run_reward_training
from mmrlhf.stages.sft import run_sft

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> RunConfig:
    cfg = load_config(TINY, [f"run_dir={tmp_path_factory.mktemp('tiny')}"])
    prepare_data(cfg)
    run_sft(cfg)
    run_feedback_simulation(cfg)
    run_reward_training(cfg)
    return cfg


def clone_run(cfg: RunConfig, run_dir: Path, overrides: list[str]) -> RunConfig:
    """A copy of `cfg`'s run directory without RL outputs, and its config with `overrides`."""
    shutil.copytree(cfg.run_dir, run_dir, ignore=shutil.ignore_patterns("rl"))
    return load_config(TINY, [f"run_dir={run_dir}", *overrides])


def first_update(cfg: RunConfig, rollout, **rl_changes) -> tuple[dict, dict, dict]:
    """(experience metrics, update metrics, policy weights after it) of one update of a fresh
    learner group on ``rollout``, one PPO epoch over one minibatch, ``cfg.rl`` with ``rl_changes``."""
    from mmrlhf.learner.rl_group import RLLearnerGroup
    from mmrlhf.stages.common import policy_path

    rl = dataclasses.replace(cfg.rl, **{"ppo_epochs": 1, "minibatch_size": len(rollout), **rl_changes})
    group = RLLearnerGroup(rl, str(policy_path(cfg, "sft")), cpus_per_rank=0.5, seed=cfg.seed)
    try:
        experience = group.make_experience(rollout, kl_coef=rl.kl_coef)
        return experience, group.update(), ray.get(group.weights())
    finally:
        group.shutdown()
