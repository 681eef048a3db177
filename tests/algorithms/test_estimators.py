import math

import pytest
import torch
from torch.testing import assert_close

from mmrlhf.algorithms.estimators import (
    ESTIMATORS,
    get_estimator,
    informative_groups,
    register_estimator,
)

R = 6
NAN = float("nan")


def right_padded_mask(lengths, R):
    return (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).double()  # (B, R)


def random_groups(seed):
    """Interleaved groups of random sizes 1-5 with random ids, NaN scores, right padding, a
    constant group and a group of one; float64."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 6, (6,), generator=g).tolist() + [1, 4]
    ids = torch.randperm(100, generator=g)[: len(sizes)]
    group_index = torch.cat([ids[k].repeat(n) for k, n in enumerate(sizes)])
    scores = torch.randn(len(group_index), generator=g, dtype=torch.float64)
    scores[-4:] = 0.3  # the constant group; the one before it is a group of one
    scores[torch.rand(len(scores), generator=g) < 0.2] = NAN
    scores[-2:] = 0.3  # the constant group keeps at least two scored samples
    order = torch.randperm(len(scores), generator=g)
    lengths = torch.randint(0, R + 1, (len(scores),), generator=g).tolist()
    return scores[order], group_index[order], lengths


def scored_members(scores, group_index, b):
    """Python floats of the scored scores in row b's group."""
    return [s for s, gi in zip(scores.tolist(), group_index.tolist())
            if gi == group_index[b].item() and not math.isnan(s)]


def per_token(sequence_advantage, lengths):
    out = torch.zeros(len(lengths), R, dtype=torch.float64)
    for b, n in enumerate(lengths):
        for t in range(n):
            out[b, t] = sequence_advantage[b]
    return out


def reference_sequence(kind, scores, group_index):
    """Per-row sequence advantage from a slow loop over each row's group."""
    out = []
    for b, r in enumerate(scores.tolist()):
        members = scored_members(scores, group_index, b)
        n = len(members)
        if math.isnan(r) or max(members) == min(members):
            out.append(0.0)
            continue
        mean = sum(members) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
        out.append({
            "grpo": (r - mean) / (std + 1e-6),
            "dr_grpo": r - mean,
            "rloo": r - (sum(members) - r) / (n - 1),
        }[kind])
    return out


def reference_reinforce_pp(scores, group_index, lengths):
    centered = []
    for b, r in enumerate(scores.tolist()):
        members = scored_members(scores, group_index, b)
        centered.append(NAN if math.isnan(r) else r - sum(members) / len(members))
    tokens = [c for c, n in zip(centered, lengths) if not math.isnan(c) for _ in range(n)]
    mean = sum(tokens) / len(tokens)
    var = sum((x - mean) ** 2 for x in tokens) / (len(tokens) - 1)
    return per_token([0.0 if math.isnan(c) else (c - mean) / math.sqrt(var + 1e-8) for c in centered], lengths)


def constant_group_rows(scores, group_index):
    return [b for b in range(len(scores)) if len(set(scored_members(scores, group_index, b))) <= 1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_match_per_group_loop_with_padding_nan_and_constant_groups(kind, seed):
    scores, group_index, lengths = random_groups(seed)
    mask = right_padded_mask(lengths, R)
    got = get_estimator(kind)(scores, group_index, mask)
    assert_close(got, per_token(reference_sequence(kind, scores, group_index), lengths))
    constant = constant_group_rows(scores, group_index)
    assert len(constant) >= 5 and torch.isnan(scores).any()  # the example has what it claims
    assert (got[constant] == 0).all() and (got[torch.isnan(scores)] == 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_reinforce_pp_matches_group_baseline_then_batch_token_whitening_loop(seed):
    scores, group_index, lengths = random_groups(seed)
    mask = right_padded_mask(lengths, R)
    got = get_estimator("reinforce_pp")(scores, group_index, mask)
    assert_close(got, reference_reinforce_pp(scores, group_index, lengths))
    scored_tokens = mask.bool() & ~torch.isnan(scores)[:, None]
    assert_close(got[scored_tokens].mean(), torch.tensor(0.0, dtype=torch.float64))
    assert_close(got[scored_tokens].std(), torch.tensor(1.0, dtype=torch.float64))
    assert (got[~scored_tokens] == 0).all()


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_groups_give_exactly_zero_in_float32(kind):
    # in float32 the mean of [0.9, 0.9, 0.9] is 0.9 - 6e-8: noise unless constant groups are caught
    scores = torch.tensor([0.9, 0.9, 0.9, 0.7, 0.3, 0.3, NAN, 0.9], dtype=torch.float32)
    group_index = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])
    got = get_estimator(kind)(scores, group_index, torch.ones(8, 3))
    assert (got == 0).all()


# Hand-worked batch, R = 3: groups {0: [0, 1, 2], 1: [3, NaN], 2: [1, 1]},
# lengths [2, 1, 3, 2, 1, 0, 2] (row 4 is unscored, row 5 has no tokens).
HAND_SCORES = torch.tensor([0.0, 1.0, 2.0, 3.0, NAN, 1.0, 1.0], dtype=torch.float64)
HAND_GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 2])
HAND_LENGTHS = [2, 1, 3, 2, 1, 0, 2]


def hand_tokens(row_values):
    return torch.tensor([[v if t < n else 0.0 for t in range(3)] for v, n in zip(row_values, HAND_LENGTHS)],
                        dtype=torch.float64)


@pytest.mark.parametrize("kind, rows", [
    # group 0: mean 1, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> (r - 1) / (1 + 1e-6)
    # group 1 has one scored sample, group 2 equal scores -> 0; the NaN row -> 0
    ("grpo", [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6), 0.0, 0.0, 0.0, 0.0]),
    # group 0: r - 1
    ("dr_grpo", [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
    # group 0: 0 - (1 + 2) / 2 = -1.5, 1 - (0 + 2) / 2 = 0, 2 - (0 + 1) / 2 = 1.5
    ("rloo", [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0]),
    # centered (dr_grpo) on the 10 scored tokens: [-1, -1 | 0 | 1, 1, 1 | 0, 0 | 0, 0]
    # mean 0.1; squared deviations 2 * 1.21 + 0.01 + 3 * 0.81 + 4 * 0.01 = 4.9; var 4.9 / 9
    # std 0.7378648: -1.1 / std = -1.4907880, -0.1 / std = -0.1355262, 0.9 / std = 1.2197357
    ("reinforce_pp", [-1.4907880, -0.1355262, 1.2197357, -0.1355262, 0.0, 0.0, -0.1355262]),
])
def test_estimators_hand_worked_example(kind, rows):
    got = get_estimator(kind)(HAND_SCORES, HAND_GROUPS, right_padded_mask(HAND_LENGTHS, 3))
    assert_close(got, hand_tokens(rows), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_informative_groups_match_loop(seed):
    scores, group_index, _ = random_groups(seed)
    near_tie = group_index == group_index[1]
    scores[near_tie] = 0.5 + 1e-9 * torch.arange(int(near_tie.sum()), dtype=torch.float64)  # spread < tol
    scores[0] = NAN  # an unscored row follows its group
    got = informative_groups(scores, group_index, tol=1e-6)
    expected = []
    for b in range(len(scores)):
        members = scored_members(scores, group_index, b)
        expected.append(len(members) >= 2 and max(members) - min(members) > 1e-6)
    assert got.dtype == torch.bool and got.tolist() == expected
    assert not all(expected) and any(expected)


def test_informative_groups_hand_worked():
    # group 0: 0 and 1 differ -> informative (the NaN row too); group 1: one scored sample;
    # group 2: 1 and 1 + 1e-9 differ by less than tol; group 3: no scored sample
    scores = torch.tensor([0.0, 1.0, NAN, 3.0, NAN, 1.0, 1.0 + 1e-9, NAN], dtype=torch.float64)
    group_index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    got = informative_groups(scores, group_index, tol=1e-6)
    assert got.tolist() == [True, True, True, False, False, False, False, False]
    assert informative_groups(scores, group_index, tol=0.0)[5:7].tolist() == [True, True]
    # a spread of exactly tol is not above it
    assert informative_groups(torch.tensor([1.0, 1.5]), torch.tensor([0, 0]), tol=0.5).tolist() == [False, False]


def test_registry_finds_estimators_by_name_and_refuses_unknown_and_duplicate_names():
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp"} <= set(ESTIMATORS)
    with pytest.raises(ValueError, match=r"'gpro'.*dr_grpo.*grpo.*reinforce_pp.*rloo"):
        get_estimator("gpro")
    with pytest.raises(ValueError, match="'rloo' is already registered"):
        register_estimator("rloo")(lambda scores, group_index, response_mask: response_mask)

    @register_estimator("test_zero")
    def zero(scores, group_index, response_mask):
        return torch.zeros_like(response_mask)

    try:
        assert get_estimator("test_zero") is zero
    finally:
        del ESTIMATORS["test_zero"]


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_estimators_name_the_bad_input(kind):
    scores, group_index, mask = torch.zeros(3), torch.zeros(3, dtype=torch.int64), torch.ones(3, 2)
    fn = get_estimator(kind)
    with pytest.raises(ValueError, match=f"{kind}: scores must be a float"):
        fn(scores[:, None], group_index, mask)
    with pytest.raises(ValueError, match="group_index must be an integer"):
        fn(scores, group_index.double(), mask)
    with pytest.raises(ValueError, match=r"response_mask must be \(3, R\)"):
        fn(scores, group_index, mask[:2])
    with pytest.raises(ValueError, match="tol=-1"):
        informative_groups(scores, group_index, tol=-1)
