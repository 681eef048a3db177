"""PPO losses (Schulman et al. 2017) over right-padded response tokens.

Normalisation: with `normalizer=None` a loss is the token mean over `response_mask`. With
`normalizer` = the global count of real tokens (all ranks, all minibatch shards of one step),
it is the masked sum divided by that count, so per-shard losses (and gradients) sum to the
full-batch loss. Metrics are detached; apart from the loss values themselves they are this
shard's token means whatever the normalizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmrlhf.algorithms.kl import kl_estimate
from mmrlhf.algorithms.masked import masked_mean, reduce_tokens


def truncated_importance_weights(
    old_logprobs: Tensor, behaviour_logprobs: Tensor, response_mask: Tensor, cap: float = 2.0
) -> Tensor:
    """Per-token ``min(π_old / π_behaviour, cap)``, 0 on padding: (B, R).

    old_logprobs: (B, R) nats under the learner's policy before the update (PPO's proximal
    policy); behaviour_logprobs: (B, R) nats under the policy that sampled the tokens (a rollout
    worker one or more versions behind in asynchronous mode); response_mask: (B, R); cap >= 1.
    The truncated importance weight of IMPALA (Espeholt et al. 2018, ρ̄ of eq. 1) on the
    decoupled PPO objective (Hilton et al. 2022, eq. 2): the clipped ratio is taken against
    π_old, the weight corrects for sampling from π_behaviour, and the cap bounds its variance.
    Raises ValueError for cap < 1.
    """
    if cap < 1:
        raise ValueError(f"truncated_importance_weights: cap={cap}, must be >= 1")
    mask = response_mask.bool()
    log_w = (old_logprobs - behaviour_logprobs).masked_fill(~mask, 0)
    return torch.exp(log_w.clamp(max=math.log(cap))) * mask


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_eps: float = 0.2,
    normalizer: float | Tensor | None = None,
    is_weights: Tensor | None = None,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective, as a loss to minimise (Schulman et al. 2017, eq. 7).

    logprobs: (B, R) current policy log-probs in nats (with grad); old_logprobs: (B, R) the
    policy's before the update; advantages: (B, R); response_mask: (B, R). clip_eps: epsilon
    of the ratio clip. clip_eps_high: upper epsilon, so the ratio is clipped to
    [1 - clip_eps, 1 + clip_eps_high] (DAPO's "clip-higher", Yu et al. 2025, sec. 3.1); None
    uses clip_eps on both sides. normalizer: see module docstring (a given token count makes
    this a global token mean, with no per-sequence length normalisation). is_weights: (B, R)
    per-token weights (no grad) for tokens sampled by another policy, from
    :func:`truncated_importance_weights`; None weighs every token 1 (the samples came from the
    old policy itself).
    Returns (loss: scalar, {"ppo/clipfrac": fraction of tokens where the clip is active,
    "ppo/approx_kl": k3 estimate of KL(old || new) in nats, "ppo/ratio_mean"}, plus
    "ppo/is_weight_mean" when is_weights is given). Raises ValueError for clip_eps_high < 0.
    """
    if clip_eps_high is None:
        clip_eps_high = clip_eps
    elif clip_eps_high < 0:
        raise ValueError(f"policy_loss: clip_eps_high={clip_eps_high}, must be >= 0 (or None)")
    mask = response_mask.bool()
    # Zeroing the log-ratio on padding keeps exp() finite there, so gradients stay finite.
    log_ratio = (logprobs - old_logprobs).masked_fill(~mask, 0)
    ratio = torch.exp(log_ratio)
    # ALGO: L = -min(r A, clip(r, 1 - eps, 1 + eps_high) A) = max(-r A, -clip(r) A)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = is_weights.detach() * per_token  # ALGO: decoupled PPO, truncated IS weight
    loss = reduce_tokens(per_token, mask, normalizer)
    with torch.no_grad():
        metrics = {
            "ppo/clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            # samples come from the old policy, so k3 with p = old, q = new
            "ppo/approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask),
            "ppo/ratio_mean": masked_mean(ratio, mask),
        }
        if is_weights is not None:
            metrics["ppo/is_weight_mean"] = masked_mean(is_weights, mask)
    return loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip_eps: float = 0.2,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss 0.5 * max((V - G)^2, (V_clip - G)^2) (Schulman et al. 2017, PPO2 code).

    values: (B, R) current value predictions (with grad); old_values: (B, R) those used for
    GAE; returns: (B, R) GAE returns; response_mask: (B, R). clip_eps: V_clip = old_values +
    clip(values - old_values, -eps, eps), in reward units. normalizer: see module docstring.
    Returns (loss: scalar, {"value/clipfrac": fraction of tokens where the clipped error is
    the larger, "value/mean": mean prediction}).
    """
    mask = response_mask.bool()
    # ALGO: V_clip = V_old + clip(V - V_old, -eps, eps)
    values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    unclipped = (values - returns).square()
    clipped = (values_clipped - returns).square()
    loss = 0.5 * reduce_tokens(torch.maximum(unclipped, clipped), mask, normalizer)
    with torch.no_grad():
        metrics = {
            "value/clipfrac": masked_mean((clipped > unclipped).to(values.dtype), mask),
            "value/mean": masked_mean(values, mask),
        }
    return loss, metrics


def entropy_bonus(
    entropy: Tensor, response_mask: Tensor, normalizer: float | Tensor | None = None
) -> Tensor:
    """Mean policy entropy (nats) over response tokens, the bonus of Schulman et al. 2017 eq. 9.

    entropy: (B, R) from `entropy_from_logits`; response_mask: (B, R). normalizer: see module
    docstring. Returns a scalar (higher is more exploratory; subtract it from the loss).
    """
    return reduce_tokens(entropy, response_mask, normalizer)


def ppo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    values: Tensor | None = None,
    old_values: Tensor | None = None,
    returns: Tensor | None = None,
    entropy: Tensor | None = None,
    is_weights: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    value_clip_eps: float = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO loss: policy + vf_coef * value - ent_coef * entropy (Schulman et al. 2017, eq. 9).

    All tensors (B, R). `values`, `old_values`, `returns` go together: omit all three for a
    critic-free run (e.g. group-normalised advantages); `entropy` and `is_weights` (see
    `policy_loss`) are optional; `clip_eps_high` is `policy_loss`'s upper ratio clip. Raises
    ValueError if only some of the value tensors are given.
    Returns (loss: scalar, metrics of `policy_loss` and `value_loss` plus "ppo/policy_loss",
    "value/loss" and "ppo/entropy" where computed, and "ppo/total_loss").
    """
    given = [t is not None for t in (values, old_values, returns)]
    if any(given) and not all(given):
        raise ValueError("ppo_loss: give `values`, `old_values` and `returns` together, or none")
    loss, metrics = policy_loss(
        logprobs, old_logprobs, advantages, response_mask, clip_eps, normalizer, is_weights, clip_eps_high
    )
    metrics["ppo/policy_loss"] = loss.detach()
    if values is not None:
        v_loss, v_metrics = value_loss(
            values, old_values, returns, response_mask, value_clip_eps, normalizer
        )
        loss = loss + vf_coef * v_loss
        metrics.update(v_metrics, **{"value/loss": v_loss.detach()})
    if entropy is not None:
        ent = entropy_bonus(entropy, response_mask, normalizer)
        loss = loss - ent_coef * ent
        metrics["ppo/entropy"] = ent.detach()
    metrics["ppo/total_loss"] = loss.detach()
    return loss, metrics
