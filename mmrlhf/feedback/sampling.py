"""Responses for people to judge: K samples per prompt from a policy, distinct per prompt.

RLHF asks people about the policy's own samples (Ouyang et al. 2022 §3.5: K responses per
prompt, ranked), so the responses come from :func:`mmrlhf.models.policy.generate`; repeated
texts carry no comparison and are dropped, as are blank ones (no text to prefer).
"""

from __future__ import annotations

import numpy as np
import torch

from mmrlhf.models.policy import encode_prompts, generate
from mmrlhf.models.sampling import Sampling

PROMPTS_PER_BATCH = 16


def distinct_responses(texts: list[str]) -> list[str]:
    """``texts`` without repeats and blank ones, in first-seen order."""
    return list(dict.fromkeys(text for text in texts if text.strip()))


@torch.no_grad()
def sample_distinct(model, processor, images: list[np.ndarray], prompts: list[str], k: int, max_new_tokens: int,
                    sampling: Sampling, generator: torch.Generator | None = None,
                    prompts_per_batch: int = PROMPTS_PER_BATCH) -> list[list[str]]:
    """Draw ``k`` responses per (image, prompt) and keep the distinct ones.

    images: uint8 (H, W) or (H, W, 3), one per prompt; each batch holds ``prompts_per_batch``
    prompts x ``k`` rows. Returns one list per prompt of at most ``k`` distinct non-blank texts
    (:func:`distinct_responses`). ``sampling``: temperature, top-p, top-k
    (:mod:`mmrlhf.models.sampling`). Raises ValueError as :func:`generate` and
    :func:`encode_prompts` do (bad images, prompts) and for ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"sample_distinct: k={k}, expected at least 1 sample per prompt")
    out: list[list[str]] = []
    for start in range(0, len(prompts), prompts_per_batch):
        rows = [i for i in range(start, min(start + prompts_per_batch, len(prompts))) for _ in range(k)]
        batch = encode_prompts(processor, [images[i] for i in rows], [prompts[i] for i in rows])
        texts = generate(model, processor, batch, max_new_tokens, generator=generator, **sampling.kwargs()).texts
        out += [distinct_responses(texts[n:n + k]) for n in range(0, len(texts), k)]
    return out
