"""Visual pretraining objective: predict the bag of words of an image's text.

Joulin et al. 2016 ("Learning Visual Features from Large Weakly Supervised Data") train image
features to predict the words of a caption, order ignored. A vision tower trained from scratch
inside a VLM gets almost no signal through the language model at first; this loss gives it a
direct one before supervised fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bag_of_words_targets(token_ids: Tensor, mask: Tensor, vocab_size: int) -> Tensor:
    """Normalised word counts: ``token_ids``/``mask`` ``(B, R)`` → ``(B, V)`` rows summing to 1.

    A row with no real token gets all zeros (it then adds nothing to the loss).
    """
    counts = torch.zeros(token_ids.shape[0], vocab_size, dtype=torch.float32, device=token_ids.device)
    counts.scatter_add_(1, token_ids.long(), mask.float())
    return counts / counts.sum(-1, keepdim=True).clamp(min=1.0)


def bag_of_words_loss(logits: Tensor, token_ids: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy between softmax(``logits`` ``(B, V)``) and the bag of words of each row.

    ``token_ids``/``mask``: ``(B, R)``. Returns a scalar in nats: the mean over rows of
    ``-Σ_v target[v] · log p[v]`` (Joulin et al. 2016, eq. 1).
    """
    targets = bag_of_words_targets(token_ids, mask, logits.shape[-1])
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
