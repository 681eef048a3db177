"""The token distribution the policy samples from and scores with: temperature, top-k, top-p.

One pure function, :func:`token_logprobs`, is used by cached generation (behaviour log-probs) and
by teacher-forced scoring (the learner's log-probs), so both are log-probs of the *same*
distribution, the one actually sampled:

    π(v | s) ∝ softmax(logits / temperature)(v) · [v ∉ placeholders] · [v in the top-k] · [v in the top-p nucleus]

renormalised over the tokens kept, in float32 nats. The nucleus follows Holtzman et al. 2020
and transformers' ``TopPLogitsWarper`` (the smallest set of most likely tokens whose mass
reaches ``top_p``, at least one token); top-k keeps the ``top_k`` largest logits (ties at the
k-th value kept), as ``TopKLogitsWarper``; temperature is applied first, then top-k, then top-p,
as transformers' sampling does. The family's image/video placeholder tokens are removed first:
they stand for image features, and a sampled one would make the next forward fail.

A removed token's log-prob is ``torch.finfo(float32).min`` (finite, so entropies and masked sums
stay finite; its probability is exactly 0). With top-k/top-p, PPO's ratio π_θ(a|s)/π_old(a|s)
is between two *truncated* policies: each keeps the tokens of its own logits, so a token that
falls out of the updated policy's nucleus has ratio 0 (no gradient pushes it back), and a KL to
the reference policy counts such tokens at that floor. Without truncation (``top_p=1``,
``top_k=0``, the default) it is the ratio of the tempered softmax policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

NEG = torch.finfo(torch.float32).min  # the logit (and about the log-prob) of a removed token


@dataclass(frozen=True)
class Sampling:
    """Sampling settings: ``temperature`` > 0, ``top_p`` in (0, 1] (1: off), ``top_k`` >= 0 (0: off).

    Raises ValueError naming the setting out of range.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or int(self.top_k) != self.top_k:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {self.top_k}")

    def kwargs(self) -> dict[str, float]:
        """``temperature``, ``top_p``, ``top_k`` as keyword arguments (of ``generate``, ``response_logprobs``...)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def resolve_sampling(generation_config: Any, temperature: Optional[float] = None, top_p: Optional[float] = None,
                     top_k: Optional[int] = None) -> Sampling:
    """Settings given here, else the checkpoint's ``generation_config`` (transformers
    ``GenerationConfig``, whose unset fields are None), else off (1.0, 1.0, 0).

    Raises ValueError (see :class:`Sampling`) for a value out of range.
    """

    def pick(value, name, default):
        if value is not None:
            return value
        saved = getattr(generation_config, name, None)
        return default if saved is None else saved

    return Sampling(float(pick(temperature, "temperature", 1.0)), float(pick(top_p, "top_p", 1.0)),
                    int(pick(top_k, "top_k", 0)))


def token_logprobs(logits: torch.Tensor, sampling: Sampling = Sampling(),
                   removed: tuple[int, ...] = ()) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 log-probs (nats) of the distribution sampled (module docstring).

    removed: token ids that never get probability (the family's placeholders).
    """
    logits = logits.float() / sampling.temperature
    if removed:
        logits = logits.index_fill(-1, torch.tensor(removed, device=logits.device), NEG)
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, NEG)
    if sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first is always kept)
        drop_sorted = (probs.cumsum(-1) - probs) >= sampling.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG)
    return F.log_softmax(logits, dim=-1)


def sample_tokens(logp: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) log-probs -> (B,) tokens: drawn with ``torch.multinomial(generator=...)`` (a seeded
    generator on the logits' device reproduces them), or the argmax when not ``do_sample``."""
    if do_sample:
        return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return logp.argmax(-1)
