"""Bradley-Terry preference model for reward-model training (Bradley & Terry 1952)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_prob(a: Tensor, b: Tensor) -> Tensor:
    """P(a is preferred over b) = sigmoid(a - b) under the Bradley-Terry model.

    a, b: scores (rewards) of the same shape, e.g. (B,). Returns that shape, values in (0, 1).
    Also the noise model of the simulated annotator (Christiano et al. 2017).
    """
    return torch.sigmoid(a - b)


def bradley_terry_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the human choices (Ouyang et al. 2022, eq. 1).

    chosen_scores, rejected_scores: (B,) reward-model scores of each pair's chosen and rejected
    response. margin: optional float or (B,) required gap (as in Touvron et al. 2023), subtracted
    inside the sigmoid. Returns (loss: scalar mean over pairs of -log sigmoid(chosen - rejected
    - margin), {"reward/accuracy": fraction of pairs with chosen > rejected, "reward/margin":
    mean chosen - rejected}). Raises ValueError on mismatched shapes or an empty batch.
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.numel() == 0:
        raise ValueError(
            f"bradley_terry_loss: chosen {tuple(chosen_scores.shape)} and rejected "
            f"{tuple(rejected_scores.shape)} scores must have the same non-empty shape"
        )
    diff = chosen_scores - rejected_scores  # (B,)
    # ALGO: -log sigma(r(x, y_w) - r(x, y_l) - m); logsigmoid is stable for large |diff|
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "reward/accuracy": (diff > 0).to(diff.dtype).mean(),
            "reward/margin": diff.mean(),
        }
    return loss, metrics
