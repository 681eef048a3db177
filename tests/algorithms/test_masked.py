import math

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.masked import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)


def right_padded_mask(lengths, R):
    return (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).double()  # (B, R)


@pytest.fixture
def padded_batch():
    g = torch.Generator().manual_seed(0)
    lengths = [0, 1, 4, 6, 3]
    x = torch.randn(len(lengths), 6, generator=g, dtype=torch.float64)
    return x, right_padded_mask(lengths, 6), lengths


def test_masked_mean_matches_loop_and_ignores_nan_in_padding(padded_batch):
    x, mask, lengths = padded_batch
    x = x.masked_fill(mask == 0, float("nan"))
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    assert_close(masked_sum(x, mask), torch.tensor(sum(real), dtype=torch.float64))
    assert_close(masked_mean(x, mask), torch.tensor(sum(real) / len(real), dtype=torch.float64))
    row_means = [sum(x[b, :n].tolist()) / n if n else 0.0 for b, n in enumerate(lengths)]
    assert_close(masked_mean(x, mask, dim=-1), torch.tensor(row_means, dtype=torch.float64))


def test_fully_masked_mean_is_zero_with_finite_grad():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 3)
    out = masked_mean(x, mask) + masked_mean(x, mask, dim=-1).sum() + masked_var(x, mask)
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_masked_var_matches_torch_var_on_real_tokens(padded_batch):
    x, mask, _ = padded_batch
    real = x[mask.bool()]
    assert_close(masked_var(x, mask), real.var(unbiased=True))
    assert_close(masked_var(x, mask, unbiased=False), real.var(unbiased=False))


def test_masked_whiten_zero_mean_unit_var_on_mask(padded_batch):
    x, mask, _ = padded_batch
    w = masked_whiten(x * 3.0 + 5.0, mask)
    assert_close(masked_mean(w, mask), torch.tensor(0.0, dtype=torch.float64))
    assert_close(masked_var(w, mask), torch.tensor(1.0, dtype=torch.float64))
    assert (w[mask == 0] == 0).all()


def test_masked_whiten_uses_given_global_statistics(padded_batch):
    x, mask, _ = padded_batch
    w = masked_whiten(x, mask, mean=1.0, var=4.0, eps=0.0)
    assert_close(w, ((x - 1.0) / 2.0) * mask)
    unshifted = masked_whiten(x, mask, shift_mean=False, mean=1.0, var=4.0, eps=0.0)
    assert_close(unshifted, ((x - 1.0) / 2.0 + 1.0) * mask)
    with pytest.raises(ValueError, match="both"):
        masked_whiten(x, mask, mean=1.0)


def test_logprobs_from_logits_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    got = logprobs_from_logits(logits, labels)
    for b in range(3):
        for t in range(5):
            expected = torch.log_softmax(logits[b, t], dim=-1)[labels[b, t]]
            assert_close(got[b, t], expected)


def test_logprobs_from_logits_is_stable_for_huge_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]], dtype=torch.float32)  # (1, 1, 3)
    got = logprobs_from_logits(logits, torch.tensor([[1]]))
    assert_close(got, torch.tensor([[-1e4]]))


def test_entropy_from_logits_matches_definition():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, dim=-1)
    assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    uniform = torch.zeros(1, 1, 8, dtype=torch.float64)
    assert_close(entropy_from_logits(uniform), torch.tensor([[math.log(8)]], dtype=torch.float64))
