"""Bradley-Terry over trajectory clips (Christiano et al. 2017, section 2.2.3).

A clip's score is the sum of its per-frame rewards, sum_t r(o_t); the probability that clip 1
is preferred is sigmoid(sum r(o^1) - sum r(o^2)) (`bradley_terry_prob`), and the loss is the
cross-entropy against the label mu, the annotator's probability that clip 1 is preferred
(1, 0, or 0.5 for "equally good"). Query selection follows the paper's ensemble heuristic:
among candidate pairs, ask about those where the members' predicted preference varies most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrlhf.algorithms.preference import bradley_terry_prob


def _check_pairs(rewards_1: Tensor, rewards_2: Tensor, name: str) -> None:
    if rewards_1.shape != rewards_2.shape or rewards_1.numel() == 0:
        raise ValueError(f"{name}: per-frame rewards of clip 1 {tuple(rewards_1.shape)} and clip 2 "
                         f"{tuple(rewards_2.shape)} must have the same non-empty shape")


def clip_preference_loss(rewards_1: Tensor, rewards_2: Tensor, mu: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the clip preference labels under Bradley-Terry (Christiano et al. 2017, eq. 1).

    rewards_1, rewards_2: (B, L) per-frame rewards of each pair's two clips (L frames each).
    mu: (B,) probability the annotator gave to clip 1 (1: clip 1 better, 0: clip 2, 0.5: tie).
    Returns (loss: scalar mean over pairs of -[mu log P + (1 - mu) log(1 - P)] with
    P = sigmoid(sum_t r_1 - sum_t r_2), {"reward/accuracy": fraction of the non-tied pairs whose
    better clip has the higher sum (NaN when all are ties)}).
    Raises ValueError on mismatched shapes, an empty batch, or mu outside [0, 1].
    """
    _check_pairs(rewards_1, rewards_2, "clip_preference_loss")
    if mu.shape != rewards_1.shape[:1] or bool(((mu < 0) | (mu > 1)).any()):
        raise ValueError(f"clip_preference_loss: mu has shape {tuple(mu.shape)}, expected "
                         f"({rewards_1.shape[0]},) with values in [0, 1]")
    # ALGO: clip score = sum of per-frame rewards; BT logit = score_1 - score_2
    logits = rewards_1.sum(dim=1) - rewards_2.sum(dim=1)  # (B,)
    loss = F.binary_cross_entropy_with_logits(logits, mu.to(logits.dtype))
    with torch.no_grad():
        decided = mu != 0.5
        right = (logits > 0) == (mu > 0.5)
        accuracy = right[decided].to(logits.dtype).mean() if bool(decided.any()) else logits.new_tensor(float("nan"))
    return loss, {"reward/accuracy": accuracy}


def ensemble_disagreement(rewards_1: Tensor, rewards_2: Tensor) -> Tensor:
    """Variance over ensemble members of P(clip 1 preferred) (Christiano et al. 2017, section 2.2.4).

    rewards_1, rewards_2: (E, B, L) per-frame rewards of B candidate pairs by E members.
    Returns (B,): the population variance over the E members of sigmoid(sum r_1 - sum r_2).
    Raises ValueError on mismatched shapes or an empty input.
    """
    _check_pairs(rewards_1, rewards_2, "ensemble_disagreement")
    if rewards_1.dim() != 3:
        raise ValueError(f"ensemble_disagreement: expected (E, B, L) rewards, got {tuple(rewards_1.shape)}")
    probs = bradley_terry_prob(rewards_1.sum(dim=2), rewards_2.sum(dim=2))  # (E, B)
    return probs.var(dim=0, unbiased=False)


def most_uncertain(disagreement: Tensor, k: int) -> Tensor:
    """Indices (k,) of the k largest disagreements of a (B,) tensor, largest first.

    Raises ValueError when k is not in 1..B.
    """
    if not 1 <= k <= disagreement.numel():
        raise ValueError(f"most_uncertain: k={k}, expected 1..{disagreement.numel()}")
    return torch.topk(disagreement, k).indices
