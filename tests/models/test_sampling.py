"""The sampled distribution (temperature, placeholder removal, top-k, top-p) against a slow reference."""

import math

import pytest
import torch
from transformers import GenerationConfig

from mmrlhf.models.sampling import Sampling, resolve_sampling, token_logprobs


def _reference(logits: list[float], temperature: float, top_k: int, top_p: float, removed: set[int]) -> list[float]:
    """One row, by hand: temper, drop removed ids, keep the k largest, keep the smallest prefix of the
    rest (most likely first) whose mass reaches top_p, renormalise. Dropped tokens: None."""
    z = {v: x / temperature for v, x in enumerate(logits) if v not in removed}
    order = sorted(z, key=lambda v: -z[v])
    if top_k:
        kth = z[order[min(top_k, len(order)) - 1]]
        order = [v for v in order if z[v] >= kth]
    total = sum(math.exp(z[v]) for v in order)
    kept, mass = [], 0.0
    for v in order:
        if mass >= top_p:
            break
        kept.append(v)
        mass += math.exp(z[v]) / total
    norm = math.log(sum(math.exp(z[v]) for v in kept))
    return [z[v] - norm if v in kept else None for v in range(len(logits))]


@pytest.mark.parametrize("temperature,top_k,top_p,removed", [
    (1.0, 0, 1.0, ()), (0.7, 3, 1.0, (2,)), (1.3, 0, 0.6, ()), (0.9, 5, 0.8, (0, 7)), (1.0, 1, 1.0, ()),
])
def test_token_logprobs_match_a_slow_reference(temperature, top_k, top_p, removed):
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * 3
    logp = token_logprobs(logits, Sampling(temperature, top_p, top_k), removed)
    for row, out in zip(logits.tolist(), logp):
        expected = _reference(row, temperature, top_k, top_p, set(removed))
        for v, e in enumerate(expected):
            if e is None:
                assert out[v].exp() == 0 and torch.isfinite(out[v])
            else:
                assert out[v].item() == pytest.approx(e, abs=1e-5)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4))


def test_no_truncation_is_the_tempered_softmax():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(token_logprobs(logits, Sampling(0.5)), torch.log_softmax(logits / 0.5, -1))


def test_settings_come_from_the_call_else_the_checkpoint_else_off():
    saved = GenerationConfig(temperature=0.7, top_p=0.8)
    assert resolve_sampling(saved) == Sampling(0.7, 0.8, 0)
    assert resolve_sampling(saved, temperature=1.0, top_k=5) == Sampling(1.0, 0.8, 5)
    assert resolve_sampling(GenerationConfig()) == Sampling()


@pytest.mark.parametrize("kwargs,message", [({"temperature": 0.0}, "temperature must be > 0"),
                                            ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
                                            ({"top_k": -1}, "top_k must be an integer >= 0")])
def test_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)
