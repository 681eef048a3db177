"""Masked reductions and log-prob helpers over right-padded response tokens.

Shapes: `B` batch, `R` response tokens, `V` vocabulary. A mask is float or bool `(B, R)` with 1
on real response tokens. Padding positions are filled with 0 before any arithmetic (not
multiplied by 0), so NaN or inf left in padding never leaks into a result or its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    return x.masked_fill(~mask.bool(), 0)


def _safe_count(count: Tensor) -> Tensor:
    # A count of 0 only happens when the masked sum is 0 too, so dividing by 1 gives 0, not NaN.
    return torch.where(count > 0, count, torch.ones_like(count))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over the positions where `mask` is 1.

    x, mask: same shape, e.g. (B, R). dim: None sums everything (0-dim result), an int sums that
    dimension (e.g. dim=-1 gives (B,)). Raises RuntimeError from torch if shapes don't broadcast.
    """
    x = _zero_padding(x, mask)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is 1; a fully masked row (or batch) gives 0.

    x, mask: same shape, e.g. (B, R). dim: None averages everything (0-dim), an int averages that
    dimension. Never NaN, and the gradient is finite (0) for fully masked rows.
    """
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / _safe_count(count)


def reduce_tokens(x: Tensor, mask: Tensor, normalizer: float | Tensor | None = None) -> Tensor:
    """A token loss reduced to a scalar: `masked_mean`, or the masked sum / `normalizer`.

    x, mask: (B, R). normalizer: None for the token mean over `mask`; the global count of real
    tokens (all ranks, all shards of one step) makes per-shard losses sum to the full-batch loss.
    A count of 0 means every mask is 0, so the sum is 0 and the result is 0, not NaN.
    """
    if normalizer is None:
        return masked_mean(x, mask)
    n = torch.as_tensor(normalizer, dtype=x.dtype, device=x.device)
    return masked_sum(x, mask) / _safe_count(n)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all positions where `mask` is 1 (0-dim).

    x, mask: same shape, e.g. (B, R). unbiased: Bessel's correction (divide by n - 1).
    Fewer than 2 real positions (unbiased) or none (biased) give 0 rather than NaN.
    """
    centered = x - masked_mean(x, mask)
    sum_sq = masked_sum(centered.square(), mask)
    count = masked_sum(torch.ones_like(x), mask)
    denom = count - 1 if unbiased else count
    return torch.where(denom > 0, sum_sq / _safe_count(denom), torch.zeros_like(sum_sq))


def masked_whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    mean: Tensor | float | None = None,
    var: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Normalise `x` to zero mean and unit variance over `mask`; 0 on padding.

    x, mask: (B, R). shift_mean=False adds the mean back (scale only). `mean`/`var`: optional
    precomputed statistics, e.g. all-reduced across learner ranks so every rank whitens the
    global batch alike; give both or neither (ValueError otherwise). Default statistics are
    `masked_mean` and the unbiased `masked_var` of this `x`.
    """
    if (mean is None) != (var is None):
        raise ValueError("masked_whiten: give both `mean` and `var`, or neither")
    if mean is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    # ALGO: (x - mu) / sqrt(var + eps)
    whitened = (x - mean) * torch.rsqrt(torch.as_tensor(var, dtype=x.dtype, device=x.device) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_padding(whitened, mask)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability (nats) of each label under softmax(logits).

    logits: (B, R, V) scores for the token at each response position; labels: (B, R) integer
    token ids in [0, V) (padding positions must hold a valid id too, e.g. the pad id).
    Returns (B, R). Computed as logit[label] - logsumexp(logits), which is stable for large
    logits and never materialises the full (B, R, V) log-softmax.
    """
    label_logits = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # (B, R)
    return label_logits - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) at each position.

    logits: (B, R, V). Returns (B, R). Uses H = logsumexp(z) - sum_v softmax(z)_v z_v, which
    stays finite when some logits are very negative.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
