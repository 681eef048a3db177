"""Simulated annotator: Bradley–Terry choice probabilities and the pairs it asks about."""

import math

import numpy as np
import pytest

from mmrlhf.feedback.simulated import choice_probability, simulate_preferences


def test_choice_probability_is_logistic_in_gold_gap():
    # gap 0.1 at temperature 0.05 -> sigmoid(2) = 0.8808
    assert choice_probability(0.6, 0.5, 0.05) == pytest.approx(1 / (1 + math.exp(-2)))
    assert choice_probability(0.5, 0.6, 0.05) == pytest.approx(1 / (1 + math.exp(2)))
    assert choice_probability(0.7, 0.2, 0.0) == 1.0
    assert choice_probability(0.2, 0.7, 0.0) == 0.0


def test_non_finite_gold_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        choice_probability(float("nan"), 0.5, 0.1)


def test_noiseless_annotator_prefers_higher_gold_and_skips_ties_and_duplicates():
    responses = ["one two", "one three", "one two", "four"]
    gold = [1.0, 0.5, 1.0, 0.5]
    pairs = simulate_preferences("p1", responses, gold, 0.0, np.random.default_rng(0))
    got = {(p.chosen, p.rejected) for p in pairs}
    assert got == {("one two", "one three"), ("one two", "four")}
    assert all(p.prompt_id == "p1" and p.source == "simulated" for p in pairs)


def test_noisy_annotator_choice_rate_matches_bradley_terry():
    rng = np.random.default_rng(0)
    wins = sum(simulate_preferences("p", ["a", "b"], [0.6, 0.5], 0.05, rng)[0].chosen == "a" for _ in range(4000))
    assert wins / 4000 == pytest.approx(1 / (1 + math.exp(-2)), abs=0.03)
