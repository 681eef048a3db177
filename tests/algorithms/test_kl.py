import json

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.kl import AdaptiveKLController, FixedKLController, kl_estimate


def test_kl_estimators_match_formulas():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(4, 5, generator=g, dtype=torch.float64)
    k1, k2, k3 = (kl_estimate(logp, ref, e) for e in ("k1", "k2", "k3"))
    for b in range(4):
        for t in range(5):
            lp, lq = logp[b, t].item(), ref[b, t].item()
            r = torch.exp(torch.tensor(lq - lp, dtype=torch.float64))
            assert_close(k1[b, t], torch.tensor(lp - lq, dtype=torch.float64))
            assert_close(k2[b, t], torch.tensor(0.5 * (lq - lp) ** 2, dtype=torch.float64))
            assert_close(k3[b, t], (r - 1) - torch.log(r))
    assert (k2 >= 0).all() and (k3 >= 0).all()
    assert_close(kl_estimate(logp, logp, "k3"), torch.zeros_like(logp))


def test_kl_estimators_are_unbiased_or_close_on_samples():
    # KL(p || q) for two categoricals, estimated from tokens sampled from p.
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    exact = (p * (p / q).log()).sum()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    for e in ("k1", "k3"):
        assert_close(kl_estimate(logp, logq, e).mean(), exact, atol=0.01, rtol=0)


def test_unknown_estimator_names_allowed_values():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_adaptive_kl_controller_follows_ziegler_update():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=256)  # error = clip(0.5) = 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    ctl.update(current_kl=5.4, n_steps=100)  # error = -0.1
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000) * (1 - 0.1 * 100 / 10_000))
    ctl.update(current_kl=torch.tensor(6.0), n_steps=100)  # on target: unchanged
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000) * (1 - 0.1 * 100 / 10_000))


def test_kl_controller_state_round_trips_through_json():
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=100)
    ctl.update(3.0, 50)
    resumed = AdaptiveKLController(0.2, target=1.0, horizon=100)
    resumed.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert resumed.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    with pytest.raises(ValueError, match="value"):
        fixed.load_state_dict({})


def test_kl_controller_rejects_bad_config():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1.0)
