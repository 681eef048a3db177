"""Reward sources without Ray: the weighted sum, monitor-only sources, unscored rows, bad functions.

The rule functions live in `tests/reward/rule_functions.py` and are named by import path, as a
user would name theirs; the learned model is a small real scorer (mean pixel / 255).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmrlhf.config import ConfigError, RewardSourceConfig
from mmrlhf.reward.sources import RewardSources
from tests.reward.rule_functions import PATH

WHITE = np.full((2, 2), 255, dtype=np.uint8)
BLACK = np.zeros((2, 2, 3), dtype=np.uint8)
GREY = np.full((3, 3), 51, dtype=np.uint8)  # mean pixel / 255 = 0.2


class MeanPixelScorer:
    def score(self, images, texts):
        return np.array([image.mean() / 255.0 for image in images], dtype=np.float32)

    def clip_score(self, images, texts):
        return np.array([len(text) for text in texts], dtype=np.float32)

    def load_weights(self, weights_dir):
        raise NotImplementedError


def sources(*named: tuple[str, float], scorer=MeanPixelScorer()) -> RewardSources:
    return RewardSources([RewardSourceConfig(name, weight) for name, weight in named], scorer)


def test_total_is_the_weighted_sum_and_weight_zero_sources_are_monitored_only():
    rs = sources(("model", 0.5), (f"{PATH}:reference_match", 2.0), (f"{PATH}:prompt_words", 0.0))
    scores = rs.score([WHITE, BLACK, GREY], ["ab", "x", "ab"], ["ab", "ab", None], ["what is it", "q", "a b"])
    assert list(scores) == ["model", "reference_match", "prompt_words", "total"]
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in scores.values())
    np.testing.assert_allclose(scores["model"], [1.0, 0.0, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(scores["reference_match"], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(scores["prompt_words"], [3.0, 1.0, 2.0])  # computed, not in the total
    # 0.5 * 1.0 + 2 * 1.0; 0.5 * 0 + 2 * 0; no reference: unscored, not 0.5 * 0.2
    np.testing.assert_allclose(scores["total"], [2.5, 0.0, np.nan], rtol=1e-6)


def test_nan_or_inf_leaves_a_row_unscored_in_the_total_only_when_the_source_is_weighted():
    texts = ["ok", "", "!"]
    args = ([WHITE] * 3, texts, [None] * 3, ["q"] * 3)
    weighted = sources(("model", 1.0), (f"{PATH}:not_finite_when_empty", 1.0)).score(*args)
    np.testing.assert_array_equal(weighted["not_finite_when_empty"], [1.0, np.nan, np.nan])  # inf is unscored too
    np.testing.assert_array_equal(weighted["total"], [2.0, np.nan, np.nan])
    monitored = sources(("model", 1.0), (f"{PATH}:not_finite_when_empty", 0.0)).score(*args)
    np.testing.assert_array_equal(monitored["total"], [1.0, 1.0, 1.0])


def test_rule_functions_alone_need_no_scorer_but_the_model_source_does():
    alone = sources((f"{PATH}:reference_match", 1.0), scorer=None)
    assert not alone.needs_model
    np.testing.assert_array_equal(alone.score([BLACK], ["a"], ["a"], ["q"])["total"], [1.0])
    with pytest.raises(RuntimeError, match="needs the learned reward model but no scorer is loaded"):
        sources(("model", 1.0), scorer=None).score([BLACK], ["a"], ["a"], ["q"])


def test_clipscore_source_is_the_scorers_clip_score_and_needs_the_scorer():
    rs = sources(("clipscore", 1.0), ("model", 0.0))
    assert rs.needs_model and rs.labels == ["clipscore", "model"]
    scores = rs.score([WHITE, GREY], ["abc", ""], [None, None], ["q", "q"])
    np.testing.assert_array_equal(scores["clipscore"], [3.0, 0.0])  # MeanPixelScorer.clip_score: len(text)
    np.testing.assert_array_equal(scores["total"], [3.0, 0.0])  # the model's weight is 0
    with pytest.raises(RuntimeError, match="needs the learned reward model but no scorer is loaded"):
        sources(("clipscore", 1.0), scorer=None).score([BLACK], ["a"], ["a"], ["q"])


@pytest.mark.parametrize("name, message", [
    ("tests.reward.no_such_module:f", "cannot import 'tests.reward.no_such_module' (ModuleNotFoundError: "),
    (f"{PATH}:missing", f"module '{PATH}' has no 'missing'"),
    (f"{PATH}:NOT_CALLABLE", "'NOT_CALLABLE' is a float, not callable"),
])
def test_a_function_that_cannot_be_imported_or_called_is_refused_when_built(name, message):
    with pytest.raises(ValueError) as info:
        sources((name, 1.0))
    assert str(info.value).startswith(f"reward source {name!r}: {message}")
    assert "\n" not in str(info.value)


def test_a_malformed_source_list_is_a_config_error_naming_the_entry():
    with pytest.raises(ConfigError, match=r"reward.sources\[1\].name: got 'no_colon'"):
        sources(("model", 1.0), ("no_colon", 1.0))


@pytest.mark.parametrize("function, message", [
    ("raises", "raised KeyError on a batch of 2 responses: 'boom'"),
    ("one_too_many", r"returned 3 values for a batch of 2 responses \(\[1.0, 1.0, 1.0\]\)"),
    ("words", r"returned a str at \[0\] \(\['high', 'high'\]\) for a batch of 2 responses"),
    ("nones", r"returned a NoneType at \[0\] \(\[None, None\]\) for a batch of 2 responses"),
    ("bools", r"returned a bool at \[0\] \(\[True, True\]\) for a batch of 2 responses"),
    ("a_number", r"returned a float \(1.0\) for a batch of 2 responses"),
    ("a_matrix", r"returned an array of shape \(2, 2\) and dtype float64 for a batch of 2 responses"),
])
def test_a_function_that_fails_on_a_batch_is_a_value_error_naming_it_the_batch_and_what_came_back(function, message):
    rs = sources(("model", 1.0), (f"{PATH}:{function}", 1.0))
    with pytest.raises(ValueError, match=rf"^reward source '{PATH}:{function}' {message}") as info:
        rs.score([WHITE, BLACK], ["a", "b"], [None, None], ["q", "q"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("texts, references, prompts, message", [
    (["a"], [None, None], ["q", "q"], "2 images but 1 texts"),
    (["a", "b"], [None, None], ["q"], "2 images but 1 prompts"),
    (["a", "b"], [None, 3], ["q", "q"], r"references\[1\] is a int, expected str or None"),
    (["a", None], [None, None], ["q", "q"], r"texts\[1\] is a NoneType, expected str"),
])
def test_mismatched_or_mistyped_inputs_are_refused_naming_the_list(texts, references, prompts, message):
    with pytest.raises(ValueError, match=f"RewardSources.score: {message}"):
        sources(("model", 1.0)).score([WHITE, WHITE], texts, references, prompts)


def test_gold_reward_by_import_path_scores_like_gold_score_and_leaves_no_reference_unscored():
    from mmrlhf.data.digits import gold_score

    rs = sources(("mmrlhf.data.digits:gold_reward", 1.0), scorer=None)
    scores = rs.score([WHITE] * 3, ["four one", "four one seven", "two"], ["four one seven"] * 2 + [None], ["q"] * 3)
    expected = [gold_score("four one", "four one seven"), 1.0, math.nan]
    np.testing.assert_allclose(scores["gold_reward"], expected, rtol=1e-6)
    np.testing.assert_allclose(scores["total"], expected, rtol=1e-6)
