import math

import torch

from mmrlhf.algorithms.pretrain import bag_of_words_loss, bag_of_words_targets


def test_bag_of_words_loss_matches_reference_loop_with_padding():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    expected = 0.0
    for b in range(4):
        logp = torch.log_softmax(logits[b], -1)
        real = [int(ids[b, r]) for r in range(5) if mask[b, r]]
        expected += -sum(logp[v] for v in real) / len(real)
    torch.testing.assert_close(bag_of_words_loss(logits, ids, mask), torch.tensor(expected / 4, dtype=torch.float32))


def test_bag_of_words_targets_count_repeats_and_ignore_padding():
    targets = bag_of_words_targets(torch.tensor([[2, 2, 1, 0]]), torch.tensor([[1, 1, 1, 0]]), 4)
    torch.testing.assert_close(targets, torch.tensor([[0.0, 1 / 3, 2 / 3, 0.0]]))


def test_bag_of_words_loss_hand_worked_uniform_logits():
    # uniform over 4 words: every target word costs log 4
    loss = bag_of_words_loss(torch.zeros(1, 4), torch.tensor([[1, 3]]), torch.tensor([[1, 1]]))
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6)
