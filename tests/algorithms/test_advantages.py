import torch
from torch.testing import assert_close

from mmrlhf.algorithms.advantages import gae, group_normalized_scores, token_rewards

LENGTHS = [0, 1, 5, 7, 3, 7]
R = 7


def right_padded_mask(lengths, R):
    return (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).double()  # (B, R)


def random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(len(LENGTHS), R, generator=g, dtype=torch.float64)
    values = torch.randn(len(LENGTHS), R, generator=g, dtype=torch.float64)
    return rewards, values, right_padded_mask(LENGTHS, R)


def reference_gae(rewards, values, lengths, gamma, lam):
    advantages = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        next_adv, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_adv = delta + gamma * lam * next_adv
            advantages[b, t] = next_adv
            next_value = values[b, t].item()
    return advantages


def test_gae_matches_reverse_loop_with_padding():
    rewards, values, mask = random_batch(0)
    # garbage beyond the real tokens must not matter
    rewards = rewards + 100 * (1 - mask)
    values = values + 100 * (1 - mask)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)]:
        advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        expected = reference_gae(rewards, values, LENGTHS, gamma, lam)
        assert_close(advantages, expected)
        assert_close(returns, (expected + values) * mask)


def test_gae_hand_worked_two_tokens():
    # gamma = 1, lambda = 0.5, r = [0, 1], V = [0.5, 0.2], V after the end = 0:
    # delta_1 = 1 + 0 - 0.2 = 0.8;  A_1 = 0.8
    # delta_0 = 0 + 0.2 - 0.5 = -0.3;  A_0 = -0.3 + 0.5 * 0.8 = 0.1
    # returns = A + V = [0.6, 1.0]
    rewards = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert_close(advantages, torch.tensor([[0.1, 0.8, 0.0]], dtype=torch.float64))
    assert_close(returns, torch.tensor([[0.6, 1.0, 0.0]], dtype=torch.float64))


def test_score_lands_on_last_real_token():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(len(LENGTHS), generator=g, dtype=torch.float64)
    kl = torch.randn(len(LENGTHS), R, generator=g, dtype=torch.float64)
    mask = right_padded_mask(LENGTHS, R)
    got = token_rewards(scores, kl, mask.bool(), kl_coef=0.1)
    expected = torch.zeros_like(kl)
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            expected[b, t] = -0.1 * kl[b, t]
        if n:
            expected[b, n - 1] += scores[b]
    assert_close(got, expected)
    assert (got[0] == 0).all()  # the empty row gets nothing


def test_token_rewards_with_no_response_tokens():
    rewards = token_rewards(torch.ones(2), torch.zeros(2, 0), torch.zeros(2, 0), kl_coef=0.1)
    assert rewards.shape == (2, 0)


def test_group_normalized_scores_match_reference():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(9, generator=g, dtype=torch.float64)
    group_ids = torch.tensor([3, 1, 3, 3, 1, 7, 1, 3, 1])
    got = group_normalized_scores(scores, group_ids, eps=1e-6)
    for i in range(9):
        members = scores[group_ids == group_ids[i]]
        if members.numel() == 1:
            expected = torch.tensor(0.0, dtype=torch.float64)
        else:
            expected = (scores[i] - members.mean()) / (members.std(unbiased=True) + 1e-6)
        assert_close(got[i], expected)


def test_unscored_samples_stay_nan_and_leave_their_group_statistics():
    scores = torch.tensor([1.0, float("nan"), 3.0, 2.0, float("nan")])
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    got = group_normalized_scores(scores, group_ids)
    assert torch.isnan(got[[1, 4]]).all()
    assert_close(got[[0, 2, 3]], torch.cat([group_normalized_scores(torch.tensor([1.0, 3.0]), torch.tensor([0, 0])),
                                            torch.zeros(1)]))


def test_all_equal_group_scores_give_zero_not_nan():
    scores = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.3, 0.3], dtype=torch.float32)
    group_ids = torch.tensor([0, 0, 0, 1, 2, 2])
    got = group_normalized_scores(scores, group_ids)
    assert (got == 0).all()
