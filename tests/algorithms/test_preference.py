import math

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.preference import bradley_terry_loss, bradley_terry_prob


def test_bradley_terry_matches_reference():
    g = torch.Generator().manual_seed(0)
    chosen = torch.randn(7, generator=g, dtype=torch.float64) * 3
    rejected = torch.randn(7, generator=g, dtype=torch.float64) * 3
    margin = torch.rand(7, generator=g, dtype=torch.float64)
    for m in (None, 0.5, margin):
        loss, metrics = bradley_terry_loss(chosen, rejected, margin=m)
        terms, wins = [], 0
        for i in range(7):
            mi = 0.0 if m is None else (m if isinstance(m, float) else m[i].item())
            d = chosen[i].item() - rejected[i].item()
            terms.append(-math.log(1.0 / (1.0 + math.exp(-(d - mi)))))
            wins += d > 0
        assert_close(loss, torch.tensor(sum(terms) / 7, dtype=torch.float64))
        assert_close(metrics["reward/accuracy"], torch.tensor(wins / 7, dtype=torch.float64))
        assert_close(metrics["reward/margin"], (chosen - rejected).mean())


def test_bradley_terry_hand_worked():
    # chosen - rejected = [ln 3, 0]: -log(3/4) = 0.287682, -log(1/2) = 0.693147; mean 0.490415
    loss, metrics = bradley_terry_loss(
        torch.tensor([math.log(3.0), 1.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    assert_close(loss, torch.tensor(0.490415, dtype=torch.float64), atol=1e-6, rtol=0)
    assert metrics["reward/accuracy"].item() == 0.5
    prob = bradley_terry_prob(torch.tensor(math.log(3.0)), torch.tensor(0.0))
    assert_close(prob, torch.tensor(0.75))


def test_bradley_terry_loss_is_finite_for_huge_gaps():
    chosen = torch.tensor([-1e4, 1e4], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, torch.zeros(2))
    loss.backward()
    assert_close(loss, torch.tensor(5e3))
    assert torch.isfinite(chosen.grad).all()


def test_bradley_terry_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same non-empty shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
