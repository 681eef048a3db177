import math

import pytest
import torch

from mmrlhf.algorithms.clip_preference import clip_preference_loss, ensemble_disagreement, most_uncertain


def test_clip_loss_matches_per_pair_reference_with_soft_labels():
    torch.manual_seed(0)
    r1, r2 = torch.randn(5, 7), torch.randn(5, 7)
    mu = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    loss, metrics = clip_preference_loss(r1, r2, mu)
    terms, right, decided = [], 0, 0
    for i in range(5):
        s1 = sum(float(x) for x in r1[i])
        s2 = sum(float(x) for x in r2[i])
        p = 1.0 / (1.0 + math.exp(-(s1 - s2)))
        terms.append(-(float(mu[i]) * math.log(p) + (1 - float(mu[i])) * math.log(1 - p)))
        if mu[i] != 0.5:
            decided += 1
            right += (s1 > s2) == (mu[i] > 0.5)
    assert float(loss) == pytest.approx(sum(terms) / 5, rel=1e-5)
    assert float(metrics["reward/accuracy"]) == pytest.approx(right / decided)


def test_clip_loss_refuses_labels_outside_zero_one_and_mismatched_clips():
    with pytest.raises(ValueError, match="mu has shape"):
        clip_preference_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="same non-empty shape"):
        clip_preference_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1.0, 0.0]))


def test_disagreement_matches_variance_over_members_reference():
    torch.manual_seed(1)
    r1, r2 = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    got = ensemble_disagreement(r1, r2)
    for b in range(4):
        probs = [1 / (1 + math.exp(-(float(r1[e, b].sum()) - float(r2[e, b].sum())))) for e in range(3)]
        mean = sum(probs) / 3
        assert float(got[b]) == pytest.approx(sum((p - mean) ** 2 for p in probs) / 3, rel=1e-5)


def test_most_uncertain_pair_is_the_hand_worked_one():
    # Three members, three pairs, clips of two frames; clip 2 scores 0 everywhere. With ln 3 as a
    # clip sum, P = sigmoid(ln 3) = 3/4 and sigmoid(-ln 3) = 1/4:
    #   pair 0: sums 0, 0, 0              -> P = 1/2, 1/2, 1/2 -> variance 0
    #   pair 1: sums ln3, ln3, -ln3       -> P = 3/4, 3/4, 1/4 -> mean 7/12, variance 1/18
    #   pair 2: sums ln3, 0, -ln3         -> P = 3/4, 1/2, 1/4 -> mean 1/2,  variance 1/24
    h = math.log(3) / 2  # per frame: two frames sum to ln 3
    r1 = torch.tensor([[[0, 0], [h, h], [h, h]],
                       [[0, 0], [h, h], [0, 0]],
                       [[0, 0], [-h, -h], [-h, -h]]], dtype=torch.float64)
    disagreement = ensemble_disagreement(r1, torch.zeros_like(r1))
    assert disagreement.tolist() == pytest.approx([0.0, 1 / 18, 1 / 24])
    assert most_uncertain(disagreement, 1).tolist() == [1]
    assert most_uncertain(disagreement, 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="k=4"):
        most_uncertain(disagreement, 4)
