"""Reward functions for the tests, good and bad, named by import path as `tests.reward.rule_functions:<name>`.

Serve replicas import them by that path, so it must resolve in every Ray worker: the worktree
root is on PYTHONPATH (the house's way to run the tests), which Ray's workers inherit.
"""

from __future__ import annotations

import math

import numpy as np

PATH = "tests.reward.rule_functions"
NOT_CALLABLE = 3.0


def reference_match(responses, references, prompts):
    """1.0 where the response is its reference, 0.0 where not, NaN without a reference."""
    return [math.nan if ref is None else float(r == ref) for r, ref in zip(responses, references)]


def prompt_words(responses, references, prompts):
    """Words in each prompt, as a numpy array (shows that the prompts arrive, in order)."""
    return np.array([len(p.split()) for p in prompts], dtype=np.float64)


def strict_length(responses, references, prompts):
    """The response's length; raises on an empty response (a function that cannot handle some input)."""
    if any(not r for r in responses):
        raise ValueError("empty response")
    return [float(len(r)) for r in responses]


def not_finite_when_empty(responses, references, prompts):
    """1.0, except NaN for an empty response and inf for "!"."""
    return [math.nan if not r else math.inf if r == "!" else 1.0 for r in responses]


def raises(responses, references, prompts):
    raise KeyError("boom")


def one_too_many(responses, references, prompts):
    return [1.0] * (len(responses) + 1)


def words(responses, references, prompts):
    return ["high"] * len(responses)


def nones(responses, references, prompts):
    return [None] * len(responses)


def bools(responses, references, prompts):
    return [True] * len(responses)


def a_number(responses, references, prompts):
    return 1.0


def a_matrix(responses, references, prompts):
    return np.ones((len(responses), 2))
