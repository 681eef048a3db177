"""Per-token rewards, GAE advantages and group baselines over right-padded responses.

Shapes: `B` batch, `R` response tokens; `response_mask` (B, R) is 1 on real tokens, which come
first in each row (right padding).
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_rewards(scores: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token reward: KL penalty on every real token, sequence score on the last one.

    scores: (B,) reward-model score of each response. kl: (B, R) per-token KL estimate in nats
    (see `kl_estimate`). response_mask: (B, R). kl_coef: beta >= 0.
    Returns (B, R): r_t = -beta * kl_t, plus scores[b] at t = mask[b].sum() - 1 (Ziegler et al.
    2019, eq. 2 spread over tokens; Ouyang et al. 2022, eq. 2). 0 on padding; a row with no
    real tokens gets no reward at all.
    """
    mask = response_mask.bool()
    # ALGO: r_t = -beta * KL_t on real tokens
    rewards = (-kl_coef * kl).masked_fill(~mask, 0)
    if rewards.shape[-1] == 0:
        return rewards
    lengths = mask.sum(dim=-1)  # (B,)
    last = (lengths - 1).clamp(min=0).unsqueeze(-1)  # (B, 1)
    # ALGO: r_T += score at the last real token; empty rows add 0 at index 0 instead
    score = torch.where(lengths > 0, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    return rewards.scatter_add(-1, last, score.unsqueeze(-1))


def gae(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eqs. 11-16).

    rewards, values: (B, R) per-token rewards and value estimates (old values, no gradient
    needed). response_mask: (B, R), right-padded. The episode ends after the last real token,
    so V beyond it is 0 (no bootstrap).
    Returns (advantages (B, R), returns (B, R) = advantages + values), both 0 on padding;
    advantages are not whitened (use `masked_whiten`).
    """
    mask = response_mask.bool()
    rewards = rewards.masked_fill(~mask, 0)
    values = values.masked_fill(~mask, 0)
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])  # (B,)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[-1])):
        # ALGO: delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)          (eq. 11)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # ALGO: A_t = delta_t + gamma * lambda * A_{t+1}               (eq. 16, recursive)
        # Padding has r = V = 0 and A_{t+1} = 0 past the end, so A stays 0 there.
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
        next_value = values[:, t]
    advantages = advantages.masked_fill(~mask, 0)
    return advantages, (advantages + values).masked_fill(~mask, 0)


def group_score_range(scores: Tensor, group_ids: Tensor) -> Tensor:
    """Max - min of each sample's group scores over the scored samples, broadcast back: (B,).

    scores: (B,) sequence scores, NaN for an unscored sample; group_ids: (B,) integer group id.
    In score units; 0 for a group of one scored sample, of equal scores, or of no scored ones.
    """
    scored = ~torch.isnan(scores)
    groups, inverse = torch.unique(group_ids, return_inverse=True)  # (G,), (B,) in 0..G-1
    inf = torch.full_like(scores, float("inf"))
    zeros = scores.new_zeros(groups.numel())
    g_max = zeros.scatter_reduce(0, inverse, torch.where(scored, scores, -inf), reduce="amax", include_self=False)
    g_min = zeros.scatter_reduce(0, inverse, torch.where(scored, scores, inf), reduce="amin", include_self=False)
    return (g_max - g_min).clamp(min=0)[inverse]  # a group with no scored sample: -inf - inf


def group_statistics(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each sample's group statistics over the group's scored samples, broadcast back to rows.

    scores: (B,) sequence scores, NaN for an unscored sample. group_ids: (B,) integer id of each
    response's group (e.g. the prompt it answers). Returns three (B,) tensors:
    centered = score - group mean (NaN where the score is NaN; exactly 0 in a group whose
    scored samples are all equal, including a group of one), count = the number of scored
    samples in the group, std = the group's unbiased (Bessel) std, 0 for a group of one.
    Unscored samples are left out of every statistic.
    """
    scored = ~torch.isnan(scores)
    groups, inverse = torch.unique(group_ids, return_inverse=True)  # (G,), (B,) in 0..G-1
    zeros = scores.new_zeros(groups.numel())
    counts = zeros.index_add(0, inverse, scored.to(scores.dtype))
    mean = zeros.index_add(0, inverse, scores.where(scored, 0.0)) / counts.clamp(min=1)  # (G,)
    centered = scores - mean[inverse]  # NaN stays NaN
    sum_sq = zeros.index_add(0, inverse, centered.where(scored, 0.0).square())
    std = torch.sqrt(sum_sq / (counts - 1).clamp(min=1))  # (G,)
    # Rounding leaves |centered| ~ 1e-8 in a constant group, which eps would not hide in float32.
    constant = (group_score_range(scores, group_ids) == 0) & scored
    centered = torch.where(constant, torch.zeros_like(scores), centered)
    return centered, counts[inverse], std[inverse]


def group_normalized_scores(scores: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """Group baseline: (score - group mean) / (group std + eps) (Shao et al. 2024, GRPO).

    scores: (B,) sequence scores. group_ids: (B,) integer id of each response's group (e.g. the
    prompt it answers). std is unbiased (Bessel). Returns (B,). A group whose scores are all
    equal, including a group of one, gives exactly 0 (no NaN). A NaN score (an unscored
    sample) stays NaN and is left out of its group's statistics (see `group_statistics`).
    """
    centered, _, std = group_statistics(scores, group_ids)
    return centered / (std + eps)
