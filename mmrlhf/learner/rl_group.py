"""The learner group of the RL stage: PPO or SAC ranks (``rl.algorithm``) over the SFT policy.

The driver side of both algorithms is the same: normalise the rollout's scores (before sharding
splits a prompt's samples across ranks), shard the batch by rank, and let every rank build its
experience (PPO: GAE advantages; SAC: replay-buffer rows) and update. Weight sync publishes the
``policy`` sub-module only, so rollout workers never see the value or Q heads.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from mmrlhf.algorithms import group_normalized_scores, masked_whiten
from mmrlhf.algorithms.estimators import get_estimator
from mmrlhf.config import RLConfig
from mmrlhf.learner.engine import deepspeed_config
from mmrlhf.learner.group import LearnerGroup
from mmrlhf.learner.ppo import PPOLearner
from mmrlhf.learner.sac import SACLearner
from mmrlhf.models.policy import load_policy, vision_tower
from mmrlhf.models.soft_q import SoftActorCritic
from mmrlhf.models.value import Actor, ActorCritic
from mmrlhf.types import Rollout, prompt_index

ALGORITHMS = {"ppo": (PPOLearner, ActorCritic), "sac": (SACLearner, SoftActorCritic)}


def policy_model_factory(policy_path: str, freeze_vision_tower: bool = False,
                         wrapper: type[nn.Module] = ActorCritic) -> Callable[[], nn.Module]:
    """A picklable factory of ``wrapper(policy)`` (`ActorCritic` or `SoftActorCritic`, fresh
    heads) with the policy loaded from ``policy_path``; ``freeze_vision_tower`` gives the
    policy's vision tower (its family's, `policy.vision_tower`) ``requires_grad=False``."""
    return _PolicyModelFactory(policy_path, freeze_vision_tower, wrapper)


class _PolicyModelFactory:
    def __init__(self, policy_path: str, freeze_vision_tower: bool, wrapper: type[nn.Module]) -> None:
        self.policy_path = policy_path
        self.freeze_vision_tower = freeze_vision_tower
        self.wrapper = wrapper

    def __call__(self) -> nn.Module:
        policy = load_policy(self.policy_path)[0]
        if self.freeze_vision_tower:
            vision_tower(policy).requires_grad_(False)
        return self.wrapper(policy)


def normalized_scores(scores: Tensor, prompt_ids: list[str], mode: str) -> Tensor:
    """Scores ``(B,)`` (NaN: unscored, stays NaN) normalised per ``rl.score_normalization``.

    "group": `group_normalized_scores` within each prompt's samples (GRPO, Shao et al. 2024);
    "batch": mean 0 and unbiased variance 1 over the scored samples (`masked_whiten`), so values
    and the KL penalty are in units of the scores' spread; "none": unchanged.
    """
    if mode == "group":
        return group_normalized_scores(scores, prompt_index(prompt_ids))
    if mode == "batch":
        scored = torch.isfinite(scores)
        whitened = masked_whiten(torch.where(scored, scores, torch.zeros_like(scores)), scored.float())
        return torch.where(scored, whitened, scores)
    return scores


def rank_spec(rl: RLConfig, policy_path: str) -> dict:
    """What every rank of the RL learner group is built from (``rl.algorithm``): keyword arguments
    of :class:`~mmrlhf.learner.group.LearnerGroup` ``worker_cls``, ``model_factory``,
    ``ds_config``, ``worker_kwargs`` and ``sync_method``."""
    worker_cls, wrapper = ALGORITHMS[rl.algorithm]
    wrapper = Actor if rl.critic_free else wrapper
    return {"worker_cls": worker_cls,
            "model_factory": policy_model_factory(policy_path, rl.freeze_vision_tower, wrapper),
            "ds_config": deepspeed_config(rl.zero_stage, max(1, rl.minibatch_size // rl.learner_ranks), 1,
                                          rl.lr, 0.0, rl.grad_clip),
            "worker_kwargs": {"ref_policy_path": policy_path, "rl": rl},
            "sync_method": "policy_state_dict_for_sync"}


class RLLearnerGroup(LearnerGroup):
    """``rl.learner_ranks`` `PPOLearner` or `SACLearner` ranks (``rl.algorithm``, :func:`rank_spec`).

    Args:
        rl: the RL settings (algorithm, ZeRO stage, minibatch size, learning rate, ...).
        policy_path: the starting policy, also the frozen reference policy.
        cpus_per_rank, gpus_per_rank, resources: Ray resources of each rank.
        seed: same initial heads and minibatch order on every rank.
    """

    def __init__(self, rl: RLConfig, policy_path: str, cpus_per_rank: float = 1, gpus_per_rank: float = 0,
                 resources: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(rl.learner_ranks, cpus_per_rank=cpus_per_rank, gpus_per_rank=gpus_per_rank,
                         resources=resources, seed=seed, **rank_spec(rl, policy_path))
        self.rl = rl

    def make_experience(self, rollout: Rollout, kl_coef: float) -> dict[str, float]:
        """Shard ``rollout`` by rank and build each rank's experience; returns reduced metrics.

        The scores are normalised here, over the whole rollout, before sharding splits it (and a
        prompt's samples) across ranks (`normalized_scores`), or, with a critic-free
        ``rl.advantage_estimator``, turned into advantages here (raw scores, no normalisation); ``rollout/score`` reports the mean
        of the normalised scores, ``rollout/reward`` (the controller) the raw one. ``kl_coef``:
        PPO's per-token KL penalty, SAC's α.
        """
        batch = rollout.to_batch()
        if self.rl.critic_free:
            # ALGO: critic-free advantages from the raw scores of each prompt's samples, before sharding
            batch["advantages"] = get_estimator(self.rl.advantage_estimator)(
                batch["scores"], prompt_index(rollout.prompt_ids), batch["response_mask"])
            return self.run("make_experience", batch, kl_coef=kl_coef)[0]
        batch["scores"] = normalized_scores(batch["scores"], rollout.prompt_ids, self.rl.score_normalization)
        return self.run("make_experience", batch, kl_coef=kl_coef)[0]

    def update(self) -> dict[str, float]:
        """One update on every rank (PPO epochs over the experience, or SAC steps from the
        replay buffer); returns reduced metrics."""
        return self.run("update")[0]
