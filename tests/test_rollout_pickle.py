"""A Rollout crosses processes (Ray pickles it) with its tensors as raw bytes and each prompt's
images once; it comes back equal, field by field, with tensors that own their memory."""

import pickle
from dataclasses import fields

import pytest
import torch

from mmrlhf.types import Rollout

SAMPLES = 4


def _rollout(vision: dict[str, torch.Tensor], prompts: int = 3) -> Rollout:
    gen = torch.Generator().manual_seed(0)
    rows = prompts * SAMPLES
    return Rollout(
        prompt_ids=[f"p{i}" for i in range(prompts) for _ in range(SAMPLES)], sample_index=list(range(SAMPLES)) * prompts,
        input_ids=torch.randint(0, 50, (rows, 7), generator=gen), attention_mask=torch.ones(rows, 7, dtype=torch.int64),
        vision=vision, response_ids=torch.randint(0, 50, (rows, 5), generator=gen),
        response_mask=torch.ones(rows, 5, dtype=torch.int64), logprobs=torch.randn(rows, 5, generator=gen),
        finish_reason=["eos"] * rows, texts=[f"t{i}" for i in range(rows)],
        policy_version=torch.full((rows,), 2), scores=torch.randn(rows, generator=gen),
        source_scores={"model": torch.randn(rows, generator=gen)}, timings={"time/generate": 0.5},
        reward_version=torch.zeros(rows, dtype=torch.int64))


def _assert_same(a: Rollout, b: Rollout) -> None:
    for f in fields(Rollout):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype, f.name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f.name)
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), torch.Tensor):
            assert x.keys() == y.keys(), f.name
            for k in x:
                assert x[k].dtype == y[k].dtype, f"{f.name}[{k}]"
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, equal_nan=True, msg=f"{f.name}[{k}]")
        else:
            assert x == y, f.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_prompts_images_travel_once_and_come_back_per_sample(dtype):
    images = torch.rand(3, 3, 32, 32).to(dtype)
    rollout = _rollout({"pixel_values": images.repeat_interleave(SAMPLES, 0),
                        "image_sizes": torch.tensor([[32, 32]] * 3).repeat_interleave(SAMPLES, 0)})
    wire = pickle.dumps(rollout, protocol=5)
    back = pickle.loads(wire)
    _assert_same(rollout, back)
    once = images.numel() * images.element_size()
    assert once < len(wire) < 2 * once  # not SAMPLES times
    back.vision["pixel_values"] += 1  # owns its memory: writable, and the original is untouched
    assert not torch.equal(back.vision["pixel_values"], rollout.vision["pixel_values"])


def test_samples_of_a_prompt_with_different_images_travel_row_by_row():
    pixels = torch.rand(3 * SAMPLES, 3, 8, 8)
    pixels[1, 0, 0, 0] = float("nan")  # a NaN never equals itself: that prompt's rows can't be shared either
    rollout = _rollout({"pixel_values": pixels})
    wire = pickle.dumps(rollout, protocol=5)
    _assert_same(rollout, pickle.loads(wire))
    assert len(wire) > pixels.numel() * pixels.element_size()


def test_a_rollout_without_images_or_scores_round_trips():
    rollout = _rollout({})
    rollout.scores = rollout.reward_version = None
    _assert_same(rollout, pickle.loads(pickle.dumps(rollout, protocol=5)))
