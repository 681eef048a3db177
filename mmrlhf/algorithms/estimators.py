"""Critic-free advantage estimators, registered by name, and DAPO's dynamic-sampling filter.

Shapes: `B` batch, `R` response tokens. Every estimator has the signature
``fn(scores (B,), group_index (B,) int64, response_mask (B, R)) -> advantages (B, R)``: a
sequence advantage computed from the scores of each group (the samples of one prompt), put on
every real token of its response, 0 on padding. A NaN score marks an unscored sample: its
advantage is 0 and it is left out of every statistic (group mean and std, batch mean and std).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mmrlhf.algorithms.advantages import group_normalized_scores, group_score_range, group_statistics
from mmrlhf.algorithms.masked import masked_whiten

Estimator = Callable[[Tensor, Tensor, Tensor], Tensor]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator adding an estimator to `ESTIMATORS` under ``name``; returns it unchanged.

    Raises ValueError if ``name`` is already registered.
    """
    def register(fn: Estimator) -> Estimator:
        if name in ESTIMATORS:
            raise ValueError(f"register_estimator: {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return register


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; ValueError naming it and the registered ones."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]


def _check_inputs(fn: str, scores: Tensor, group_index: Tensor, response_mask: Tensor | None = None) -> None:
    if scores.dim() != 1 or not scores.is_floating_point():
        raise ValueError(f"{fn}: scores must be a float (B,) tensor, got {scores.dtype} {tuple(scores.shape)}")
    if group_index.shape != scores.shape or group_index.is_floating_point() or group_index.dtype == torch.bool:
        raise ValueError(f"{fn}: group_index must be an integer ({scores.numel()},) tensor like scores, "
                         f"got {group_index.dtype} {tuple(group_index.shape)}")
    if response_mask is not None and (response_mask.dim() != 2 or response_mask.shape[0] != scores.numel()):
        raise ValueError(f"{fn}: response_mask must be ({scores.numel()}, R), got {tuple(response_mask.shape)}")


def _per_token(sequence_advantages: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) sequence advantages, NaN for unscored rows, onto the real tokens: (B, R)."""
    keep = response_mask.bool() & ~torch.isnan(sequence_advantages)[:, None]
    return sequence_advantages[:, None].expand(keep.shape).masked_fill(~keep, 0)


@register_estimator("grpo")
def grpo_advantages(scores: Tensor, group_index: Tensor, response_mask: Tensor) -> Tensor:
    """GRPO outcome supervision: A_i = (r_i - mean(r)) / (std(r) + 1e-6) over the group.

    Shao et al. 2024 (DeepSeekMath), sec. 4.1.2; std unbiased (Bessel). scores: (B,) (NaN:
    unscored); group_index: (B,) integer; response_mask: (B, R). Returns (B, R), exactly 0 for
    groups whose scored samples are all equal (incl. a group of one). Raises ValueError on
    wrong shapes or dtypes.
    """
    _check_inputs("grpo", scores, group_index, response_mask)
    return _per_token(group_normalized_scores(scores, group_index), response_mask)


@register_estimator("dr_grpo")
def dr_grpo_advantages(scores: Tensor, group_index: Tensor, response_mask: Tensor) -> Tensor:
    """Dr. GRPO: A_i = r_i - mean(r) over the group, without GRPO's division by the std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv 2503.20783). Their other fix,
    dropping the per-response 1/|o_i| of the loss, needs nothing here: `policy_loss` already
    reduces the token losses by a sum over the batch divided by one count (the global number
    of real tokens, its ``normalizer``), the same for every response, so longer responses are
    not weighed down. The paper divides by a fixed constant instead; a per-step count differs
    from it only by a per-step scale of the loss.
    scores: (B,) (NaN: unscored); group_index: (B,) integer; response_mask: (B, R).
    Returns (B, R), exactly 0 for constant groups (incl. a group of one). Raises ValueError on
    wrong shapes or dtypes.
    """
    _check_inputs("dr_grpo", scores, group_index, response_mask)
    centered, _, _ = group_statistics(scores, group_index)
    return _per_token(centered, response_mask)


@register_estimator("rloo")
def rloo_advantages(scores: Tensor, group_index: Tensor, response_mask: Tensor) -> Tensor:
    """Leave-one-out baseline: A_i = r_i - mean_{j != i} r_j (RLOO; Ahmadian et al. 2024).

    The estimator of Kool et al. 2019 on sequence scores. Over the group's n scored samples it
    is n / (n - 1) * (r_i - mean(r)); a group of one scored sample gets 0.
    scores: (B,) (NaN: unscored); group_index: (B,) integer; response_mask: (B, R).
    Returns (B, R), exactly 0 for constant groups. Raises ValueError on wrong shapes or dtypes.
    """
    _check_inputs("rloo", scores, group_index, response_mask)
    centered, count, _ = group_statistics(scores, group_index)
    # ALGO: r_i - (sum - r_i) / (n - 1) = n / (n - 1) * (r_i - mean)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return _per_token(centered * scale, response_mask)


@register_estimator("reinforce_pp")
def reinforce_pp_advantages(scores: Tensor, group_index: Tensor, response_mask: Tensor) -> Tensor:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): group-mean baseline, batch whitening.

    A_i = r_i - mean(r) over the group, put on every real token, then whitened over all real
    tokens of scored rows in the batch (mean 0, unbiased std 1, `masked_whiten`): the
    statistics are over tokens, so a longer response weighs more in them.
    This is the "baseline" variant for grouped samples; the KL penalty is not folded into the
    return here (it stays a separate loss or token-reward term). The statistics are this
    call's batch: call it on the whole rollout, before sharding across ranks.
    scores: (B,) (NaN: unscored); group_index: (B,) integer; response_mask: (B, R).
    Returns (B, R), 0 on padding and on unscored rows. Raises ValueError on wrong shapes or
    dtypes.
    """
    _check_inputs("reinforce_pp", scores, group_index, response_mask)
    centered, _, _ = group_statistics(scores, group_index)
    scored_tokens = response_mask.bool() & ~torch.isnan(scores)[:, None]
    return masked_whiten(_per_token(centered, response_mask), scored_tokens)


def informative_groups(scores: Tensor, group_index: Tensor, tol: float = 1e-6) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, sec. 3.2): rows of groups that carry a signal.

    scores: (B,) (NaN: unscored); group_index: (B,) integer. Returns (B,) bool, True for every
    row (scored or not) of a group with at least two scored samples whose scores differ,
    max - min > tol (score units); groups with all-equal scores give zero group-relative
    advantages, and DAPO drops them and samples more. Raises ValueError for tol < 0 or wrong
    shapes or dtypes.
    """
    _check_inputs("informative_groups", scores, group_index)
    if tol < 0:
        raise ValueError(f"informative_groups: tol={tol}, must be >= 0")
    return group_score_range(scores, group_index) > tol
