"""Discrete SAC math against slow per-token loops, with right padding and an empty response."""

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.sac import (
    polyak_update,
    sac_actor_loss,
    sac_critic_loss,
    sac_loss,
    soft_q_targets,
    soft_state_values,
)

LENGTHS = [0, 3, 5, 1, 5]
R, V = 5, 7


def random_batch(seed, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "logp": torch.log_softmax(randn(B, R, V), -1).requires_grad_(),
        "ref_logp": torch.log_softmax(randn(B, R, V), -1),
        "q1": randn(B, R, V).requires_grad_(),
        "q2": randn(B, R, V).requires_grad_(),
        "target_q1": randn(B, R, V),
        "target_q2": randn(B, R, V),
        "actions": torch.randint(0, V, (B, R), generator=g),
        "rewards": randn(B, R),
        "response_mask": (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).double(),
    }


def slow_soft_value(q, logp, ref, alpha, b, t):
    return sum(logp[b, t, a].exp() * (q[b, t, a] - alpha * (logp[b, t, a] - (ref[b, t, a] if ref is not None else 0)))
               for a in range(V))


def slow_targets(rewards, next_q, logp, ref, alpha, gamma, lengths):
    y = torch.zeros(len(lengths), R, dtype=torch.float64)
    for b, n in enumerate(lengths):
        for t in range(n):
            following = slow_soft_value(next_q, logp, ref, alpha, b, t + 1) if t + 1 < n else 0.0
            y[b, t] = rewards[b, t] + gamma * following
    return y


def token_mean(values):
    return sum(values) / max(len(values), 1)


@pytest.mark.parametrize("use_ref", [True, False])
def test_soft_values_and_targets_match_per_token_loops_with_padding(use_ref):
    x = random_batch(0)
    ref = x["ref_logp"] if use_ref else None
    alpha, gamma = 0.3, 0.9
    next_q = torch.minimum(x["target_q1"], x["target_q2"])
    values = soft_state_values(next_q, x["logp"].detach(), alpha, ref)
    for b in range(len(LENGTHS)):
        for t in range(R):
            assert_close(values[b, t], slow_soft_value(next_q, x["logp"].detach(), ref, alpha, b, t))
    targets = soft_q_targets(x["rewards"], values, x["response_mask"], gamma)
    assert_close(targets, slow_targets(x["rewards"], next_q, x["logp"].detach(), ref, alpha, gamma, LENGTHS))


@pytest.mark.parametrize("use_ref", [True, False])
def test_sac_losses_match_per_token_loops_and_keep_gradients_apart(use_ref):
    x = random_batch(1)
    ref = x["ref_logp"] if use_ref else None
    alpha, gamma, coef = 0.2, 1.0, 0.5
    loss, metrics = sac_loss(x["logp"], x["q1"], x["q2"], x["target_q1"], x["target_q2"], x["actions"],
                             x["rewards"], x["response_mask"], alpha, gamma, coef, ref)
    next_q = torch.minimum(x["target_q1"], x["target_q2"])
    y = slow_targets(x["rewards"], next_q, x["logp"].detach(), ref, alpha, gamma, LENGTHS)
    real = [(b, t) for b, n in enumerate(LENGTHS) for t in range(n)]
    critic = token_mean([0.5 * ((x["q1"][b, t, x["actions"][b, t]] - y[b, t]) ** 2
                                + (x["q2"][b, t, x["actions"][b, t]] - y[b, t]) ** 2) for b, t in real])
    q_min = torch.minimum(x["q1"], x["q2"]).detach()
    actor = token_mean([sum(x["logp"][b, t, a].exp() * (alpha * (x["logp"][b, t, a] - (ref[b, t, a] if use_ref else 0))
                                                        - q_min[b, t, a]) for a in range(V)) for b, t in real])
    assert_close(metrics["sac/critic_loss"], critic.detach())
    assert_close(metrics["sac/actor_loss"], actor.detach())
    assert_close(loss, actor + coef * critic)
    assert set(metrics) >= {"sac/q", "sac/target", "sac/kl_ref" if use_ref else "sac/entropy"}

    # The actor loss moves only the policy, the critic loss only the Q heads.
    actor_only = sac_actor_loss(x["logp"], x["q1"], x["q2"], alpha, x["response_mask"], ref)
    grads = torch.autograd.grad(actor_only, [x["logp"], x["q1"]], allow_unused=True)
    assert grads[1] is None and grads[0].abs().sum() > 0
    critic_only = sac_critic_loss(x["q1"], x["q2"], x["actions"], y, x["response_mask"])
    assert torch.autograd.grad(critic_only, [x["logp"]], allow_unused=True)[0] is None


def test_hand_worked_two_action_state():
    # π = π_ref = (½, ½), Q = (1, 0), α = 1: V = ½·1 + ½·0 - 0 = ½; actor loss = ½(0 - 1) + ½(0 - 0) = -½.
    logp = torch.log(torch.tensor([[[0.5, 0.5]]]))
    q = torch.tensor([[[1.0, 0.0]]])
    mask = torch.ones(1, 1)
    assert soft_state_values(q, logp, 1.0, logp).item() == pytest.approx(0.5)
    assert sac_actor_loss(logp, q, q, 1.0, mask, logp).item() == pytest.approx(-0.5)
    # Without the prior the entropy bonus counts: V = ½ - 1·(½ log ½ + ½ log ½) = ½ + log 2.
    assert soft_state_values(q, logp, 1.0).item() == pytest.approx(0.5 + torch.log(torch.tensor(2.0)).item())


def test_actor_optimum_is_reference_tilted_by_exp_q_over_alpha():
    g = torch.Generator().manual_seed(3)
    ref = torch.log_softmax(torch.randn(1, 1, V, generator=g, dtype=torch.float64), -1)
    q = torch.randn(1, 1, V, generator=g, dtype=torch.float64)
    alpha = 0.5
    logits = torch.zeros(1, 1, V, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = sac_actor_loss(torch.log_softmax(logits, -1), q, q, alpha, torch.ones(1, 1), ref)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert_close(torch.softmax(logits, -1), torch.softmax(ref + q / alpha, -1), atol=1e-6, rtol=1e-5)


def test_zero_q_heads_leave_the_reference_policy_where_it_is():
    x = random_batch(2)
    zeros = torch.zeros_like(x["target_q1"])
    logits = x["ref_logp"].clone().requires_grad_()  # the policy's logits, π = softmax(logits) = π_ref
    loss = sac_actor_loss(torch.log_softmax(logits, -1), zeros, zeros, 0.1, x["response_mask"], x["ref_logp"])
    (grad,) = torch.autograd.grad(loss, [logits])
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert grad.abs().max().item() < 1e-12


def test_loss_sums_over_shards_with_a_global_normalizer():
    x = random_batch(4)
    args = lambda rows: [x[k][rows] for k in ("logp", "q1", "q2", "target_q1", "target_q2", "actions", "rewards",
                                                "response_mask")]
    whole, _ = sac_loss(*args(slice(None)), 0.2, 1.0, 0.7, x["ref_logp"])
    n = x["response_mask"].sum()
    halves = [sac_loss(*args(rows), 0.2, 1.0, 0.7, x["ref_logp"][rows], normalizer=n)[0]
              for rows in (slice(0, 2), slice(2, None))]
    assert_close(sum(halves), whole)


def test_empty_batch_and_masked_image_token_give_finite_loss_and_gradients():
    x = random_batch(5, lengths=[0, 2])
    logp = x["logp"].detach().clone()
    logp[..., 0] = torch.finfo(torch.float64).min  # the policy's image token
    logp = torch.log_softmax(logp, -1).requires_grad_()
    for mask in (x["response_mask"], torch.zeros_like(x["response_mask"])):
        loss, metrics = sac_loss(logp, x["q1"], x["q2"], x["target_q1"], x["target_q2"], x["actions"], x["rewards"],
                                 mask, alpha=5.0, ref_logp=logp.detach())
        grads = torch.autograd.grad(loss, [logp, x["q1"]])
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
        assert all(torch.isfinite(grad).all() for grad in grads)


def test_polyak_update_moves_targets_by_tau_and_checks_arguments():
    online = [torch.ones(3), torch.full((2, 2), 4.0)]
    target = [torch.zeros(3), torch.zeros(2, 2)]
    polyak_update(target, online, 0.25)
    assert_close(target[0], torch.full((3,), 0.25))
    assert_close(target[1], torch.full((2, 2), 1.0))
    polyak_update(target, online, 1.0)
    assert_close(target[1], online[1])
    with pytest.raises(ValueError, match="tau=1.5"):
        polyak_update(target, online, 1.5)
    with pytest.raises(ValueError, match="1 target tensors for 2"):
        polyak_update(target[:1], online, 0.1)
