import math

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.ppo import entropy_bonus, policy_loss, ppo_loss, truncated_importance_weights, value_loss

LENGTHS = [0, 3, 6, 1, 6, 4]
R = 6


def right_padded_mask(lengths, R):
    return (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).double()  # (B, R)


def random_batch(seed, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    shape = (len(lengths), R)

    def randn(scale=1.0):
        return torch.randn(shape, generator=g, dtype=torch.float64) * scale

    old_logprobs = -randn().abs()
    return {
        "logprobs": (old_logprobs + randn(0.3)).requires_grad_(),
        "old_logprobs": old_logprobs,
        "advantages": randn(),
        "values": randn().requires_grad_(),
        "old_values": randn(),
        "returns": randn(),
        "entropy": randn().abs().requires_grad_(),
        "response_mask": right_padded_mask(lengths, R),
    }


def real_tokens(lengths):
    return [(b, t) for b, n in enumerate(lengths) for t in range(n)]


def reference_policy_term(ratio, adv, eps_low=0.2, eps_high=0.2):
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) and whether the clipped side is the larger loss."""
    clip_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
    return -min(ratio * adv, clip_ratio * adv), -clip_ratio * adv > -ratio * adv


def test_policy_loss_matches_reference_loop():
    batch = random_batch(0)
    loss, metrics = policy_loss(
        batch["logprobs"], batch["old_logprobs"], batch["advantages"], batch["response_mask"], 0.2
    )
    terms, clipped, kls, ratios = [], 0, [], []
    for b, t in real_tokens(LENGTHS):
        log_ratio = batch["logprobs"][b, t].item() - batch["old_logprobs"][b, t].item()
        ratio, adv = math.exp(log_ratio), batch["advantages"][b, t].item()
        term, is_clipped = reference_policy_term(ratio, adv)
        terms.append(term)
        clipped += is_clipped
        kls.append((ratio - 1) - log_ratio)
        ratios.append(ratio)
    n = len(terms)
    assert_close(loss, torch.tensor(sum(terms) / n, dtype=torch.float64))
    assert_close(metrics["ppo/clipfrac"], torch.tensor(clipped / n, dtype=torch.float64))
    assert_close(metrics["ppo/approx_kl"], torch.tensor(sum(kls) / n, dtype=torch.float64))
    assert_close(metrics["ppo/ratio_mean"], torch.tensor(sum(ratios) / n, dtype=torch.float64))
    assert 0 < clipped < n  # the example exercises both branches


def test_value_loss_matches_reference_loop():
    batch = random_batch(1)
    loss, metrics = value_loss(
        batch["values"], batch["old_values"], batch["returns"], batch["response_mask"], 0.2
    )
    terms, clipped = [], 0
    for b, t in real_tokens(LENGTHS):
        v, v_old, ret = (batch[k][b, t].item() for k in ("values", "old_values", "returns"))
        v_clip = v_old + min(max(v - v_old, -0.2), 0.2)
        terms.append(0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2))
        clipped += (v_clip - ret) ** 2 > (v - ret) ** 2
    n = len(terms)
    assert_close(loss, torch.tensor(sum(terms) / n, dtype=torch.float64))
    assert_close(metrics["value/clipfrac"], torch.tensor(clipped / n, dtype=torch.float64))
    mean_value = sum(batch["values"][b, t].item() for b, t in real_tokens(LENGTHS)) / n
    assert_close(metrics["value/mean"], torch.tensor(mean_value, dtype=torch.float64))


def test_clip_eps_high_clips_ratio_to_asymmetric_range_like_reference_loop():
    batch = random_batch(6)
    args = (batch["logprobs"], batch["old_logprobs"], batch["advantages"], batch["response_mask"])
    loss, metrics = policy_loss(*args, clip_eps=0.2, clip_eps_high=0.28)
    terms, clipped, between, above, below = [], 0, 0, 0, 0
    for b, t in real_tokens(LENGTHS):
        ratio = math.exp(batch["logprobs"][b, t].item() - batch["old_logprobs"][b, t].item())
        adv = batch["advantages"][b, t].item()
        term, is_clipped = reference_policy_term(ratio, adv, eps_low=0.2, eps_high=0.28)
        terms.append(term)
        clipped += is_clipped
        between += 1.2 < ratio < 1.28 and adv > 0  # clipped only by the symmetric range
        above += ratio > 1.28 and adv > 0
        below += ratio < 0.8 and adv < 0
    n = len(terms)
    assert_close(loss, torch.tensor(sum(terms) / n, dtype=torch.float64))
    assert_close(metrics["ppo/clipfrac"], torch.tensor(clipped / n, dtype=torch.float64))
    assert between > 0 and above > 0 and below > 0  # the example tells the two ranges apart
    symmetric, _ = policy_loss(*args, clip_eps=0.2)
    assert not torch.isclose(loss, symmetric)
    assert_close(policy_loss(*args, clip_eps=0.2, clip_eps_high=0.2)[0], symmetric)
    full, _ = ppo_loss(*args, clip_eps=0.2, clip_eps_high=0.28)
    assert_close(full, loss)
    with pytest.raises(ValueError, match="clip_eps_high=-0.1"):
        policy_loss(*args, clip_eps_high=-0.1)


def test_policy_and_value_loss_hand_worked():
    # policy, eps = 0.2, old log-probs 0:
    #   token 0: ratio 1.5, A = 1 -> -min(1.5, 1.2) = -1.2 (clipped: no gradient)
    #   token 1: ratio 0.5, A = 1 -> -min(0.5, 0.8) = -0.5 (unclipped: d/dlogp = -A r / 2 = -0.25)
    #   loss = (-1.2 - 0.5) / 2 = -0.85; clipfrac = 1/2
    #   approx_kl = mean((r - 1) - log r) = ((0.5 - ln 1.5) + (-0.5 - ln 0.5)) / 2 = 0.143841
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64)
    logprobs.requires_grad_()
    mask = torch.ones(1, 2)
    old_logprobs = torch.zeros(1, 2, dtype=torch.float64)
    loss, metrics = policy_loss(logprobs, old_logprobs, torch.ones(1, 2), mask)
    loss.backward()
    assert_close(loss, torch.tensor(-0.85, dtype=torch.float64))
    assert_close(logprobs.grad, torch.tensor([[0.0, -0.25]], dtype=torch.float64))
    assert metrics["ppo/clipfrac"].item() == 0.5
    approx_kl = torch.tensor(0.143841, dtype=torch.float64)
    assert_close(metrics["ppo/approx_kl"], approx_kl, atol=1e-6, rtol=0)
    # value, eps = 0.2: V = [1, 0], V_old = [0.5, 0.5], G = [2, 0]
    #   token 0: (1 - 2)^2 = 1 vs (0.7 - 2)^2 = 1.69 -> 1.69
    #   token 1: (0 - 0)^2 = 0 vs (0.3 - 0)^2 = 0.09 -> 0.09
    #   loss = 0.5 * (1.69 + 0.09) / 2 = 0.445; clipfrac = 1
    v_loss, v_metrics = value_loss(
        torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.5, 0.5]], dtype=torch.float64),
        torch.tensor([[2.0, 0.0]], dtype=torch.float64),
        mask,
    )
    assert_close(v_loss, torch.tensor(0.445, dtype=torch.float64))
    assert v_metrics["value/clipfrac"].item() == 1.0


def full_loss(batch, normalizer=None):
    return ppo_loss(
        batch["logprobs"],
        batch["old_logprobs"],
        batch["advantages"],
        batch["response_mask"],
        values=batch["values"],
        old_values=batch["old_values"],
        returns=batch["returns"],
        entropy=batch["entropy"],
        vf_coef=0.5,
        ent_coef=0.01,
        normalizer=normalizer,
    )


def test_truncated_importance_weights_match_reference_loop_with_padding():
    g = torch.Generator().manual_seed(7)
    old = -torch.rand(len(LENGTHS), R, generator=g, dtype=torch.float64) * 3
    behaviour = old + torch.randn(len(LENGTHS), R, generator=g, dtype=torch.float64)
    mask = right_padded_mask(LENGTHS, R)
    behaviour[mask == 0] = -1e4  # padding garbage: exp(old - behaviour) would overflow
    weights = truncated_importance_weights(old, behaviour, mask, cap=2.0)
    expected = torch.zeros_like(old)
    for b, t in real_tokens(LENGTHS):
        expected[b, t] = min(math.exp(old[b, t].item() - behaviour[b, t].item()), 2.0)
    assert_close(weights, expected)
    real = mask.bool()
    assert (weights[real] == 2.0).any() and (weights[real] < 1.0).any()  # both sides of the cap
    assert_close(truncated_importance_weights(old, old, mask), mask)  # on-policy: every weight 1
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(old, old, mask, cap=0.5)


def test_policy_loss_with_importance_weights_matches_reference_loop():
    batch = random_batch(5)
    weights = torch.rand(len(LENGTHS), R, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    mask = batch["response_mask"]
    loss, metrics = policy_loss(batch["logprobs"], batch["old_logprobs"], batch["advantages"], mask, 0.2,
                                is_weights=weights)
    terms = []
    for b, t in real_tokens(LENGTHS):
        ratio = math.exp(batch["logprobs"][b, t].item() - batch["old_logprobs"][b, t].item())
        adv = batch["advantages"][b, t].item()
        terms.append(weights[b, t].item() * reference_policy_term(ratio, adv)[0])
    assert_close(loss, torch.tensor(sum(terms) / len(terms), dtype=torch.float64))
    assert_close(metrics["ppo/is_weight_mean"], (weights * mask).sum() / mask.sum())
    unweighted, _ = policy_loss(batch["logprobs"], batch["old_logprobs"], batch["advantages"], mask, 0.2)
    ones, _ = policy_loss(batch["logprobs"], batch["old_logprobs"], batch["advantages"], mask, 0.2,
                          is_weights=torch.ones_like(mask))
    assert_close(ones, unweighted)


def test_ppo_loss_combines_components():
    batch = random_batch(2)
    loss, metrics = full_loss(batch)
    mask = batch["response_mask"]
    p, _ = policy_loss(batch["logprobs"], batch["old_logprobs"], batch["advantages"], mask)
    v, _ = value_loss(batch["values"], batch["old_values"], batch["returns"], mask)
    ent = entropy_bonus(batch["entropy"], mask)
    assert_close(loss, p + 0.5 * v - 0.01 * ent)
    expected_keys = {"ppo/clipfrac", "ppo/approx_kl", "value/clipfrac", "ppo/entropy"}
    assert expected_keys <= set(metrics)
    with pytest.raises(ValueError, match="together"):
        ppo_loss(batch["logprobs"], batch["old_logprobs"], batch["advantages"], mask, values=mask)


@pytest.mark.parametrize("split", [3, 1, 4])
def test_loss_same_when_batch_split_across_ranks(split):
    batch = random_batch(3)
    leaves = ("logprobs", "values", "entropy")
    full, _ = full_loss(batch)
    full_grads = torch.autograd.grad(full, [batch[k] for k in leaves])

    normalizer = batch["response_mask"].sum()  # all-reduced token count across ranks
    shards = [{k: v[:split] for k, v in batch.items()}, {k: v[split:] for k, v in batch.items()}]
    shard_losses = [full_loss(shard, normalizer=normalizer)[0] for shard in shards]
    shard_grads = [torch.autograd.grad(s, [batch[k] for k in leaves]) for s in shard_losses]

    assert_close(sum(shard_losses), full)
    for full_grad, *per_shard in zip(full_grads, *shard_grads):
        assert_close(sum(per_shard), full_grad)


@pytest.mark.parametrize("lengths", [[0, 0, 0], [0, 4, 0]])
@pytest.mark.parametrize("normalizer", [None, "count"])
def test_empty_response_gives_finite_losses_and_grads(lengths, normalizer):
    batch = random_batch(4, lengths)
    pad = batch["response_mask"] == 0
    with torch.no_grad():  # garbage on padding: exp(1000) would overflow
        batch["logprobs"].masked_fill_(pad, 1000.0)
        batch["values"].masked_fill_(pad, 1e200)
    n = batch["response_mask"].sum() if normalizer == "count" else None
    loss, metrics = full_loss(batch, normalizer=n)
    loss.backward()
    assert torch.isfinite(loss)
    for k in ("logprobs", "values", "entropy"):
        assert torch.isfinite(batch[k].grad).all()
        assert (batch[k].grad[pad] == 0).all()
    assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    if sum(lengths) == 0:
        assert loss.item() == 0.0
