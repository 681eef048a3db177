"""PPO on one learner rank: experience from a scored rollout, then epochs of clipped updates.

Follows PPO for language models as in Ziegler et al. 2019 / Ouyang et al. 2022: the sequence
scores are normalised (``rl.score_normalization``: within each prompt's samples, or over the
step), the score lands on the last real response token, each token pays
``kl_coef * KL(π‖π_ref)``, GAE (Schulman et al. 2016) over the response, advantages whitened
with statistics all-reduced over the ranks, clipped surrogate and clipped value loss
(Schulman et al. 2017). The math is the pure functions of ``mmrlhf.algorithms``; this module
only feeds them and reduces across ranks.

Sharding invariance: each minibatch loss is a masked *sum* divided by the global number of
real tokens of that minibatch (all ranks together), times the world size because DeepSpeed
averages gradients over ranks; the step then equals one step on the unsharded minibatch.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from ray import ObjectRef
from torch import Tensor

from mmrlhf.algorithms import (gae, group_normalized_scores, kl_estimate, masked_mean, masked_whiten, ppo_loss,
                               token_rewards)
from mmrlhf.config import RLConfig
from mmrlhf.learner.engine import deepspeed_config
from mmrlhf.learner.group import LearnerGroup
from mmrlhf.learner.worker import LearnerWorker
from mmrlhf.models.policy import PromptBatch, load_policy, response_logprobs
from mmrlhf.models.value import ActorCritic
from mmrlhf.types import Experience, Rollout

POLICY_PREFIX = "policy."


def actor_critic_factory(policy_path: str, freeze_vision_tower: bool = False) -> Callable[[], ActorCritic]:
    """A picklable factory of the actor-critic (policy + fresh value head) loaded from ``policy_path``.

    ``freeze_vision_tower``: the policy's ``model.vision_tower`` gets ``requires_grad=False``.
    """
    return _ActorCriticFactory(policy_path, freeze_vision_tower)


class _ActorCriticFactory:
    def __init__(self, policy_path: str, freeze_vision_tower: bool) -> None:
        self.policy_path = policy_path
        self.freeze_vision_tower = freeze_vision_tower

    def __call__(self) -> ActorCritic:
        policy = load_policy(self.policy_path)[0]
        if self.freeze_vision_tower:
            policy.model.vision_tower.requires_grad_(False)
        return ActorCritic(policy)


def _all_reduce_sum(*values: float | Tensor) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _global_whiten(x: Tensor, mask: Tensor) -> Tensor:
    """`masked_whiten` of ``x`` over ``mask`` (same shape) with the mean and unbiased variance
    of the masked entries of every rank together (all-reduced), so the result does not depend
    on how the batch is sharded."""
    n, total, total_sq = _all_reduce_sum(mask.sum(), (x * mask).sum(), (x**2 * mask).sum())
    mean = total / max(n, 1.0)
    var = max(total_sq / max(n, 1.0) - mean**2, 0.0) * n / max(n - 1, 1.0)
    return masked_whiten(x, mask, mean=torch.tensor(mean), var=torch.tensor(var))


def normalized_scores(scores: Tensor, prompt_ids: list[str], mode: str) -> Tensor:
    """Scores ``(B,)`` (NaN: unscored, stays NaN) normalised per ``rl.score_normalization``.

    "group": `group_normalized_scores` within each prompt's samples (GRPO, Shao et al. 2024);
    "batch": mean 0 and unbiased variance 1 over the scored samples (`masked_whiten`), so values
    and the KL penalty are in units of the scores' spread; "none": unchanged.
    """
    if mode == "group":
        _, prompt_index = np.unique(np.asarray(prompt_ids), return_inverse=True)
        return group_normalized_scores(scores, torch.from_numpy(prompt_index))
    if mode == "batch":
        scored = torch.isfinite(scores)
        whitened = masked_whiten(torch.where(scored, scores, torch.zeros_like(scores)), scored.float())
        return torch.where(scored, whitened, scores)
    return scores


class PPOLearner(LearnerWorker):
    """A learner rank that also holds the frozen reference policy and this rank's experience.

    Args (beyond :class:`LearnerWorker`'s):
        ref_policy_path: the reference policy (the SFT policy), loaded frozen on every rank.
        rl: the PPO settings (``RLConfig``).
    """

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int,
                 model_factory: Callable, ds_config: dict, seed: int = 0,
                 ref_policy_path: str = "", rl: RLConfig | None = None) -> None:
        torch.set_num_threads(1)
        super().__init__(rank, world_size, master_addr, master_port, model_factory, ds_config, seed)
        self.rl = rl or RLConfig()
        self.ref_policy = load_policy(ref_policy_path)[0].eval().requires_grad_(False)
        self.experience: dict[str, Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def _forward(self, b: dict[str, Tensor]):
        return self.engine(b["input_ids"], b["attention_mask"], b["pixel_values"],
                           b["response_ids"], b["response_mask"], self.rl.temperature)

    @torch.no_grad()
    def make_experience(self, shard: dict[str, Tensor], kl_coef: float) -> dict[str, float]:
        """Old/ref log-probs, values, rewards, GAE advantages and returns for this rank's shard.

        ``shard``: ``input_ids``/``attention_mask`` (B, T), ``pixel_values`` (B, 3, H, W),
        ``response_ids``/``response_mask``/``logprobs`` (B, R), ``scores`` (B,) (NaN: unscored,
        masked out; already normalised in the driver by ``PPOLearnerGroup.make_experience``).
        Stores the experience on the rank; returns metrics reduced over ranks.
        """
        scored = torch.isfinite(shard["scores"])
        mask = shard["response_mask"].float() * scored[:, None]
        scores = torch.where(scored, shard["scores"], torch.zeros_like(shard["scores"]))
        self.engine.eval()
        old_logprobs, _, values = self._forward(shard)
        batch = PromptBatch(shard["input_ids"], shard["attention_mask"], shard["pixel_values"])
        ref_logprobs, _, _ = response_logprobs(self.ref_policy, batch, shard["response_ids"], mask,
                                               self.rl.temperature)
        # ALGO: per-token KL penalty to the reference policy; the score on the last real token.
        kl = kl_estimate(old_logprobs, ref_logprobs, self.rl.kl_estimator) * mask
        rewards = token_rewards(scores, kl, mask, kl_coef)
        advantages, returns = gae(rewards, values, mask, self.rl.gamma, self.rl.lam)
        self.experience = Experience(
            input_ids=shard["input_ids"], attention_mask=shard["attention_mask"], pixel_values=shard["pixel_values"],
            response_ids=shard["response_ids"], response_mask=mask, old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs, values=values, rewards=rewards,
            advantages=_global_whiten(advantages, mask),  # ALGO: whitened over the whole batch, every rank
            returns=returns).to_dict()
        sums = _all_reduce_sum(
            (kl.sum(-1) * scored).sum(), scores.sum(), scored.sum(), mask.sum(),
            ((shard["logprobs"] - old_logprobs).abs() * mask).sum(), len(scored))
        kl_sum, score_sum, n_scored, n_tokens, mismatch, n_rows = sums
        return {"rollout/kl": kl_sum / max(n_scored, 1.0), "rollout/score": score_sum / max(n_scored, 1.0),
                "rollout/unscored": n_rows - n_scored, "rollout/response_tokens": n_tokens / max(n_rows, 1.0),
                "rollout/logprob_mismatch": mismatch / max(n_tokens, 1.0)}

    def _minibatch_loss(self, model: Any, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        (n_tokens,) = _all_reduce_sum(b["response_mask"].sum())
        logprobs, entropy, values = self._forward(b)
        loss, metrics = ppo_loss(
            logprobs, b["old_logprobs"], b["advantages"], b["response_mask"],
            values=values, old_values=b["values"], returns=b["returns"], entropy=entropy,
            clip_eps=self.rl.clip_eps, value_clip_eps=self.rl.value_clip_eps,
            vf_coef=self.rl.vf_coef, ent_coef=self.rl.ent_coef, normalizer=n_tokens)
        metrics["ppo/entropy"] = masked_mean(entropy.detach(), b["response_mask"])
        return loss * self.world_size, metrics

    def update(self) -> dict[str, float]:
        """``ppo_epochs`` passes over this rank's experience in minibatches; metrics averaged.

        Every rank draws the same permutation (same seed), so all ranks step together.
        """
        if not self.experience:
            raise RuntimeError("PPOLearner.update: call make_experience first")
        # eval mode while training: no dropout, BatchNorm statistics frozen, so the learner's
        # log-probs are those the rollout workers (eval mode) sampled with
        self.engine.eval()
        n = len(self.experience["response_ids"])
        per_rank = max(1, self.rl.minibatch_size // self.world_size)
        history: list[dict[str, float]] = []
        for _ in range(self.rl.ppo_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, per_rank):
                idx = order[start:start + per_rank]
                minibatch = {k: v[idx] for k, v in self.experience.items()}
                history.append(self.train_step(minibatch, self._minibatch_loss))
        return {k: sum(h[k] for h in history) / len(history) for k in history[0]}

    def rng_state(self) -> dict[str, Tensor]:
        """Adds the minibatch-order generator to :meth:`LearnerWorker.rng_state`."""
        return {**super().rng_state(), "minibatch_order": self.generator.get_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`rng_state` returned."""
        super().set_rng_state(state)
        self.generator.set_state(state["minibatch_order"])

    def policy_state_dict_for_sync(self) -> dict[str, Tensor] | None:
        """Rank 0: the policy's full weights (no value head) under the policy's own key names."""
        full = self.state_dict_for_sync()
        if full is None:
            return None
        return {k[len(POLICY_PREFIX):]: v for k, v in full.items() if k.startswith(POLICY_PREFIX)}


class PPOLearnerGroup(LearnerGroup):
    """The learner group of the PPO stage: ``rl.learner_ranks`` :class:`PPOLearner` ranks.

    Args:
        rl: PPO settings (ZeRO stage, minibatch size, learning rate, clipping...).
        policy_path: the starting policy, also the frozen reference policy.
        cpus_per_rank, gpus_per_rank, resources: Ray resources of each rank.
        seed: same initial value head and minibatch order on every rank.
    """

    def __init__(self, rl: RLConfig, policy_path: str, cpus_per_rank: float = 1, gpus_per_rank: float = 0,
                 resources: dict[str, float] | None = None, seed: int = 0) -> None:
        ds_config = deepspeed_config(rl.zero_stage, max(1, rl.minibatch_size // rl.learner_ranks), 1,
                                     rl.lr, 0.0, rl.grad_clip)
        super().__init__(rl.learner_ranks, actor_critic_factory(policy_path, rl.freeze_vision_tower), ds_config,
                         cpus_per_rank, gpus_per_rank, resources, seed, worker_cls=PPOLearner,
                         worker_kwargs={"ref_policy_path": policy_path, "rl": rl})
        self.rl = rl

    def make_experience(self, rollout: Rollout, kl_coef: float) -> dict[str, float]:
        """Shard ``rollout`` by rank and build each rank's experience; returns reduced metrics.

        The scores are normalised here, over the whole rollout, before sharding splits it (and a
        prompt's samples) across ranks (`normalized_scores`); ``rollout/score`` reports the mean
        of the normalised scores, ``rollout/reward`` (the controller) the raw one.
        """
        batch = rollout.to_batch()
        batch["scores"] = normalized_scores(batch["scores"], rollout.prompt_ids, self.rl.score_normalization)
        return self.run("make_experience", batch, kl_coef=kl_coef)[0]

    def update(self) -> dict[str, float]:
        """PPO epochs over the stored experience on every rank; returns reduced metrics."""
        return self.run("update")[0]

    def weights(self, method_name: str = "policy_state_dict_for_sync") -> ObjectRef:
        """ObjectRef to the policy's full weights (no value head): what weight sync publishes."""
        return super().weights(method_name)
