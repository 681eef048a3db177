"""Eval decoding: greedy by default, or seeded sampling at eval.temperature/top_p/top_k."""

import numpy as np
import pytest

from mmrlhf.config import ConfigError, load_config
from mmrlhf.models import build_policy_preset, load_policy
from mmrlhf.stages.eval import eval_responses, eval_sampling


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = load_policy(str(build_policy_preset("tiny", tmp_path_factory.mktemp("policy"))))
    return model.eval(), processor


def _inputs(n=6):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(n)], ["Read the digits."] * n


def test_sampled_eval_is_repeatable_per_seed_and_greedy_is_the_default(tiny):
    model, processor = tiny
    images, prompts = _inputs()
    assert eval_sampling(load_config(None, []), model) is None  # greedy unless eval.do_sample
    sampling = eval_sampling(load_config(None, ["eval.do_sample=true", "eval.temperature=3.0", "eval.top_k=50"]), model)
    assert (sampling.temperature, sampling.top_k) == (3.0, 50)
    first = eval_responses(model, processor, images, prompts, 4, 6, sampling, seed=1)
    assert eval_responses(model, processor, images, prompts, 4, 6, sampling, seed=1) == first
    others = [eval_responses(model, processor, images, prompts, 4, 6, sampling, seed=s) for s in (2, 3)]
    assert any(texts != first for texts in others)  # the seed draws the samples (6 rows x 6 tokens at T=3)


def test_eval_sampling_settings_out_of_range_name_the_key():
    with pytest.raises(ConfigError, match="eval.top_p"):
        load_config(None, ["eval.top_p=1.5"])
