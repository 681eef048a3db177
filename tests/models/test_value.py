"""Value head and ActorCritic: one module giving logprobs, entropy and values; safetensors round trip."""

import numpy as np
import pytest
import torch

from mmrlhf.models import (ActorCritic, build_policy_preset, encode_prompts, encode_responses, load_policy,
                           response_logprobs)
from mmrlhf.models.value import VALUE_HEAD_FILE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = load_policy(build_policy_preset("tiny", tmp_path_factory.mktemp("policy") / "tiny"))
    return model, processor


def _inputs(processor):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(2)]
    batch = encode_prompts(processor, images, ["What number is written?", "What number is written in the image?"])
    response_ids, response_mask = encode_responses(processor, ["four one seven", "two"], max_len=8)
    return batch, response_ids, response_mask


def test_actor_critic_forward_matches_response_logprobs_and_trains_the_head(tiny):
    model, processor = tiny
    batch, response_ids, response_mask = _inputs(processor)
    ac = ActorCritic(model)
    torch.nn.init.normal_(ac.value_head.linear.weight)
    logprobs, entropy, values = ac(batch.input_ids, batch.attention_mask, batch.vision, response_ids,
                                   response_mask, temperature=0.8)
    assert logprobs.shape == entropy.shape == values.shape == response_ids.shape
    expected, _, _ = response_logprobs(model, batch, response_ids, response_mask, temperature=0.8)
    torch.testing.assert_close(logprobs, expected)

    (values * response_mask).sum().backward()
    assert ac.value_head.linear.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in ac.parameters() if p.grad is not None)
    ac.zero_grad()


def test_value_head_starts_at_zero(tiny):
    model, processor = tiny
    batch, response_ids, response_mask = _inputs(processor)
    _, _, values = ActorCritic(model)(batch.input_ids, batch.attention_mask, batch.vision, response_ids,
                                      response_mask)
    assert torch.equal(values, torch.zeros_like(values))


def test_actor_critic_save_load_round_trip(tiny, tmp_path):
    model, processor = tiny
    ac = ActorCritic(model)
    torch.nn.init.normal_(ac.value_head.linear.weight)
    ac.save_pretrained(tmp_path, processor=processor)
    loaded = ActorCritic.load(tmp_path)
    sd, sd2 = ac.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    load_policy(tmp_path)  # the folder is also a plain policy checkpoint


def test_load_without_value_head_names_the_missing_file(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=VALUE_HEAD_FILE):
        ActorCritic.load(tmp_path)
