"""The learner group on a real local Ray cluster: non-finite rewards are masked, a killed rank
stops the run with a message naming it, and a fresh group resumes from the saved checkpoint."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import ray
import torch

from mmrlhf.learner.group import LearnerRankDied
from mmrlhf.learner.rl_group import RLLearnerGroup
from mmrlhf.config import REWARD_VERSION, TOTAL
from mmrlhf.reward.scorer import RewardScorer
from mmrlhf.reward.sources import RewardSources
from mmrlhf.rollout.prompts import PromptSource
from mmrlhf.rollout.worker import RolloutWorker
from mmrlhf.stages.common import RunPaths, policy_path
from mmrlhf.stages.data import load_split

NONFINITE_ROWS = (1, 4)



def _rollout_with_nonfinite_scores(cfg):
    """A real rollout (4 prompts x 2 samples, plain RolloutWorker) whose rows 1 and 4 scored NaN and inf."""
    sources = RewardSources(cfg.reward.sources, RewardScorer.from_pretrained(RunPaths(cfg.run_dir).reward_model))

    def score(images, texts, references, prompts):
        scores = sources.score(images, texts, references, prompts)
        scores[TOTAL][list(NONFINITE_ROWS)] = [np.nan, np.inf]
        return scores | {REWARD_VERSION: np.zeros(len(texts), dtype=np.int64)}  # as the deployment replies

    threads = torch.get_num_threads()
    try:
        worker = RolloutWorker(str(policy_path(cfg, "sft")), lambda: score, seed=0, temperature=1.0,
                               max_new_tokens=cfg.rl.max_new_tokens, media=cfg.data.media)
        return worker.generate(PromptSource(load_split(cfg, "feedback"), 4, seed=0).next_batch(), 2, step=0)
    finally:
        torch.set_num_threads(threads)


def test_nonfinite_rewards_are_masked_and_a_killed_rank_stops_the_run_resumably(ray_cluster, tiny_run, tmp_path,
                                                                             pickle_payload):
    cfg = tiny_run
    rollout = _rollout_with_nonfinite_scores(cfg)
    assert torch.isnan(rollout.scores[list(NONFINITE_ROWS)]).all()
    rl = dataclasses.replace(cfg.rl, ppo_epochs=1, minibatch_size=len(rollout))
    sft = str(policy_path(cfg, "sft"))
    folder = tmp_path / "step_1"
    folder.mkdir()
    group = RLLearnerGroup(rl, sft, cpus_per_rank=0.5, seed=cfg.seed)
    try:
        metrics = group.make_experience(rollout, kl_coef=rl.kl_coef)
        assert metrics["rollout/unscored"] == len(NONFINITE_ROWS)  # dropped from learning and counted
        metrics |= group.update()
        assert all(np.isfinite(v) for v in metrics.values())
        weights = ray.get(group.weights("state_dict_for_sync"))
        assert all(torch.isfinite(w).all() for w in weights.values())
        saved = group.save_checkpoint(folder)

        ray.kill(group.workers[1])
        with pytest.raises(LearnerRankDied, match=r"learner rank 1 died .*`--resume`"):
            group.make_experience(rollout, kl_coef=rl.kl_coef)
    finally:
        group.shutdown()

    fresh = RLLearnerGroup(rl, sft, cpus_per_rank=0.5, seed=cfg.seed)
    try:
        assert fresh.load_checkpoint(folder) == saved
        sentinel, trap = pickle_payload
        for optim in (folder / "deepspeed").glob("*optim_states.pt"):  # a crafted checkpoint
            optim.write_bytes(pickle.dumps({"optimizer_state_dict": trap}))
        with pytest.raises(ValueError, match="optim_states.pt: refused"):
            fresh.load_checkpoint(folder)
        assert not sentinel.exists()
    finally:
        fresh.shutdown()
