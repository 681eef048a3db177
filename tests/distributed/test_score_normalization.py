"""Score normalisation before PPO (driver side), against slow references, with unscored samples."""

import math

import pytest
import torch

from mmrlhf.learner.rl_group import normalized_scores

NAN = float("nan")
SCORES = torch.tensor([1.0, 3.0, NAN, 2.0, 6.0, 4.0])
PROMPTS = ["a", "a", "a", "b", "b", "c"]


def test_batch_mode_whitens_the_scored_samples_and_keeps_nan():
    got = normalized_scores(SCORES, PROMPTS, "batch")
    real = [1.0, 3.0, 2.0, 6.0, 4.0]
    mean = sum(real) / len(real)
    std = math.sqrt(sum((x - mean) ** 2 for x in real) / (len(real) - 1))
    assert math.isnan(got[2])
    assert got[[0, 1, 3, 4, 5]].tolist() == pytest.approx([(x - mean) / std for x in real], abs=1e-5)


def test_group_mode_normalises_within_each_prompt_and_none_keeps_the_scores():
    got = normalized_scores(SCORES, PROMPTS, "group")
    half = 1 / math.sqrt(2)  # (x - mean) / unbiased std of two values is -+1/sqrt(2)
    assert math.isnan(got[2])
    assert got[[0, 1, 3, 4, 5]].tolist() == pytest.approx([-half, half, -half, half, 0.0], abs=1e-5)
    assert torch.equal(normalized_scores(SCORES, PROMPTS, "none").nan_to_num(), SCORES.nan_to_num())
