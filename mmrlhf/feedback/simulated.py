"""A simulated annotator: pairwise choices from a gold scorer with Bradley–Terry noise.

Follows the synthetic-feedback setup of Christiano et al. 2017 (§3.3): the annotator prefers
response ``a`` over ``b`` with probability ``sigmoid((gold(a) - gold(b)) / temperature)``
(Bradley & Terry 1952). Pairs whose gold scores tie are not asked: a real annotator would
mark them "same", which carries no preference.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from mmrlhf.types import PreferencePair


def choice_probability(gold_a: float, gold_b: float, temperature: float) -> float:
    """P(annotator prefers a over b) under Bradley–Terry noise; ``temperature`` 0 is noiseless.

    Raises:
        ValueError: a gold score is not finite.
    """
    if not (math.isfinite(gold_a) and math.isfinite(gold_b)):
        raise ValueError(f"gold scores must be finite, got {gold_a!r} and {gold_b!r}")
    gap = gold_a - gold_b
    if temperature == 0:
        return 1.0 if gap > 0 else 0.0 if gap < 0 else 0.5
    return 1.0 / (1.0 + math.exp(-gap / temperature))


def simulate_preferences(
    prompt_id: str,
    responses: list[str],
    gold: list[float],
    temperature: float,
    rng: np.random.Generator,
    annotator: str = "simulated-gold",
) -> list[PreferencePair]:
    """Ask the simulated annotator about every pair of distinct responses to one prompt.

    ``responses`` and ``gold`` have length K (samples for the prompt). Duplicate texts and
    gold ties are skipped. Returns up to K·(K-1)/2 pairs with ``source="simulated"``.
    """
    pairs = []
    seen = set()
    for i, j in itertools.combinations(range(len(responses)), 2):
        a, b = responses[i], responses[j]
        if a == b or (a, b) in seen or gold[i] == gold[j]:
            continue
        seen.update({(a, b), (b, a)})
        prefers_a = rng.random() < choice_probability(gold[i], gold[j], temperature)
        chosen, rejected = (a, b) if prefers_a else (b, a)
        pairs.append(PreferencePair(prompt_id, chosen, rejected, annotator, "simulated"))
    return pairs
