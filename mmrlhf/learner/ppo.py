"""PPO on one learner rank: experience from a scored rollout, then epochs of clipped updates.

Follows PPO for language models as in Ziegler et al. 2019 / Ouyang et al. 2022: the sequence
scores are normalised (``rl.score_normalization``: within each prompt's samples, or over the
step), the score lands on the last real response token, each token pays
``kl_coef * KL(π‖π_ref)``, GAE (Schulman et al. 2016) over the response, advantages whitened
with statistics all-reduced over the ranks, clipped surrogate and clipped value loss
(Schulman et al. 2017). The math is the pure functions of ``mmrlhf.algorithms``; this module
only feeds them and reduces across ranks. Every log-prob (behaviour, old, reference, current)
is of the distribution the rollout workers sample (``rl.temperature``/``top_p``/``top_k``,
:mod:`mmrlhf.models.sampling`), so with top-k/top-p the ratio π_θ/π_old is between the
truncated policies: a sampled token that leaves the updated policy's nucleus has ratio 0.

Sharding invariance: each minibatch loss is a masked *sum* divided by the global number of
real tokens of that minibatch (all ranks together), times the world size because DeepSpeed
averages gradients over ranks; the step then equals one step on the unsharded minibatch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from mmrlhf.algorithms import (gae, kl_estimate, masked_mean, masked_whiten, ppo_loss, reduce_tokens, token_rewards,
                               truncated_importance_weights)
from mmrlhf.config import RLConfig
from mmrlhf.learner.worker import LearnerWorker, all_reduce_sum, block_permutation
from mmrlhf.models.policy import PromptBatch, load_policy, response_logprobs
from mmrlhf.models.sampling import resolve_sampling
from mmrlhf.types import Experience, vision_of


def scored_rows(shard: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(scored (B,) bool, mask (B, R) float response mask of scored rows, scores (B,) with 0 for
    unscored rows) of a shard whose ``scores`` mark unscored rows with NaN: those rows stay in
    the batch (every rank keeps its shard size) but add nothing to any loss."""
    scored = torch.isfinite(shard["scores"])
    mask = shard["response_mask"].float() * scored[:, None]
    return scored, mask, torch.where(scored, shard["scores"], torch.zeros_like(shard["scores"]))


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of the metrics of several steps (same keys in each)."""
    return {k: sum(h[k] for h in history) / len(history) for k in history[0]}


def rollout_stats(shard: dict[str, Tensor], scores: Tensor, scored: Tensor, mask: Tensor, old_logprobs: Tensor,
                  kl: Tensor) -> dict[str, float]:
    """Experience-pass metrics of a rank's shard, summed over all ranks (collective).

    shard: as for ``make_experience`` (its ``logprobs`` are the behaviour log-probs);
    scores, scored: (B,) scores used (0 where unscored) and whether a row was scored;
    mask: (B, R) response mask of scored rows; old_logprobs, kl: (B, R) the learner's log-probs
    and the per-token KL to the reference (0 on padding).
    Returns ``rollout/kl`` (nats per sequence), ``rollout/score``, ``rollout/unscored`` (rows),
    ``rollout/response_tokens`` (per row) and ``rollout/logprob_mismatch`` (mean |behaviour −
    learner| log-prob per token: 0 when weight sync is exact and the policy has not moved).
    """
    kl_sum, score_sum, n_scored, n_tokens, mismatch, n_rows = all_reduce_sum(
        (kl.sum(-1) * scored).sum(), scores.sum(), scored.sum(), mask.sum(),
        ((shard["logprobs"] - old_logprobs).abs() * mask).sum(), len(scored))
    return {"rollout/kl": kl_sum / max(n_scored, 1.0), "rollout/score": score_sum / max(n_scored, 1.0),
            "rollout/unscored": n_rows - n_scored, "rollout/response_tokens": n_tokens / max(n_rows, 1.0),
            "rollout/logprob_mismatch": mismatch / max(n_tokens, 1.0)}


def _global_whiten(x: Tensor, mask: Tensor) -> Tensor:
    """`masked_whiten` of ``x`` over ``mask`` (same shape) with the mean and unbiased variance
    of the masked entries of every rank together (all-reduced), so the result does not depend
    on how the batch is sharded."""
    n, total, total_sq = all_reduce_sum(mask.sum(), (x * mask).sum(), (x**2 * mask).sum())
    mean = total / max(n, 1.0)
    var = max(total_sq / max(n, 1.0) - mean**2, 0.0) * n / max(n - 1, 1.0)
    return masked_whiten(x, mask, mean=torch.tensor(mean), var=torch.tensor(var))


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
        self.rl = rl or RLConfig(algorithm="ppo")
        self.ref_policy = load_policy(ref_policy_path)[0].eval().requires_grad_(False)
        # the rollout workers resolve the same settings from the same checkpoint
        self.sampling = resolve_sampling(self.ref_policy.generation_config, self.rl.temperature, self.rl.top_p,
                                         self.rl.top_k)
        self.experience: dict[str, Tensor] = {}
        self.kl_coef = self.rl.kl_coef

    def _forward(self, b: dict[str, Tensor]):
        return self.engine(b["input_ids"], b["attention_mask"], vision_of(b), b["response_ids"], b["response_mask"],
                           **self.sampling.kwargs())

    @torch.no_grad()
    def make_experience(self, shard: dict[str, Tensor], kl_coef: float) -> dict[str, float]:
        """Old/ref log-probs and advantages (GAE with values and returns, or critic-free) for this rank's shard.

        ``shard``: ``input_ids``/``attention_mask`` (B, T), the images under ``vision.*`` keys (B, ...),
        ``response_ids``/``response_mask``/``logprobs`` (B, R), ``scores`` (B,) (NaN: unscored,
        masked out; already normalised in the driver by ``RLLearnerGroup.make_experience``), and
        for a critic-free estimator ``advantages`` (B, R), computed in the driver over the whole
        rollout. Stores the experience on the rank; returns metrics reduced over ranks.
        """
        scored, mask, scores = scored_rows(shard)
        self.engine.eval()
        self.kl_coef = kl_coef
        batch = PromptBatch(shard["input_ids"], shard["attention_mask"], vision_of(shard))
        needs_ref = not self.rl.critic_free or kl_coef > 0 or self.rl.kl_target is not None
        ref_logprobs = response_logprobs(self.ref_policy, batch, shard["response_ids"], mask,
                                         **self.sampling.kwargs())[0] if needs_ref else None
        if self.rl.critic_free:
            # One epoch on samples the current weights drew: π_old is the behaviour policy itself
            # (their log-probs agree to ~1e-7), so the old-log-prob forward would be redundant.
            fresh = self.rl.ppo_epochs == 1 and not self.rl.asynchronous
            old_logprobs = shard["logprobs"] * mask if fresh else self._forward(shard)[0]
            kl = (kl_estimate(old_logprobs, ref_logprobs, self.rl.kl_estimator) * mask if needs_ref
                  else torch.zeros_like(mask))
            specific = {"advantages": shard["advantages"] * mask}
        else:
            old_logprobs, _, values = self._forward(shard)
            # ALGO: per-token KL penalty to the reference policy; the score on the last real token.
            kl = kl_estimate(old_logprobs, ref_logprobs, self.rl.kl_estimator) * mask
            rewards = token_rewards(scores, kl, mask, kl_coef)
            advantages, returns = gae(rewards, values, mask, self.rl.gamma, self.rl.lam)
            specific = {"advantages": _global_whiten(advantages, mask),  # ALGO: whitened over all ranks
                        "values": values, "rewards": rewards, "returns": returns}
        self.experience = Experience(
            input_ids=shard["input_ids"], attention_mask=shard["attention_mask"], vision=vision_of(shard),
            response_ids=shard["response_ids"], response_mask=mask, old_logprobs=old_logprobs,
            # ALGO: rows sampled by an older policy (asynchronous mode) are reweighted toward π_old
            is_weights=truncated_importance_weights(old_logprobs, shard["logprobs"], mask, self.rl.tis_cap),
            ref_logprobs=ref_logprobs, **specific,
        ).to_dict()
        metrics = rollout_stats(shard, scores, scored, mask, old_logprobs, kl)
        if not needs_ref:
            del metrics["rollout/kl"]  # no reference pass was made: nothing measured
        return metrics

    def _minibatch_loss(self, model: Any, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        (n_tokens,) = all_reduce_sum(b["response_mask"].sum())
        logprobs, entropy, values = self._forward(b)
        critic = {} if self.rl.critic_free else {"values": values, "old_values": b["values"], "returns": b["returns"]}
        loss, metrics = ppo_loss(
            logprobs, b["old_logprobs"], b["advantages"], b["response_mask"], **critic, entropy=entropy,
            is_weights=b["is_weights"], clip_eps=self.rl.clip_eps, clip_eps_high=self.rl.clip_eps_high,
            value_clip_eps=self.rl.value_clip_eps, vf_coef=self.rl.vf_coef, ent_coef=self.rl.ent_coef,
            normalizer=n_tokens)
        if self.rl.critic_free and "ref_logprobs" in b:
            # ALGO: GRPO's KL leash as a loss term, beta * k3(π‖π_ref) per token (Shao et al. 2024, eq. 3)
            kl_loss = reduce_tokens(kl_estimate(logprobs, b["ref_logprobs"], self.rl.kl_estimator),
                                    b["response_mask"], n_tokens)
            loss = loss + self.kl_coef * kl_loss
            metrics["ppo/kl_loss"] = kl_loss.detach()
        metrics["policy/entropy"] = masked_mean(entropy.detach(), b["response_mask"])
        return loss * self.world_size, metrics

    def update(self) -> dict[str, float]:
        """``ppo_epochs`` passes over this rank's experience in minibatches; metrics averaged.

        Every rank draws the same permutation (same seed), so all ranks step together. A prompt's
        samples stay in one minibatch (:func:`block_permutation`), so the learner runs each prompt
        once for all of them (:func:`mmrlhf.models.policy.prefill`).
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
            order = block_permutation(n, self.rl.samples_per_prompt, self.generator)
            for start in range(0, n, per_rank):
                idx = order[start:start + per_rank]
                minibatch = {k: v[idx] for k, v in self.experience.items()}
                history.append(self.train_step(minibatch, self._minibatch_loss))
        return mean_metrics(history)
