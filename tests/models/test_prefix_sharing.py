"""Prompt groups: a prompt repeated across a batch (a rollout's samples) is run through the model
once, and every log-prob, hidden state and gradient equals that of one forward per row."""

import numpy as np
import pytest
import torch

from mmrlhf.models import build_policy_preset, encode_prompts, generate, load_policy, response_distribution
from mmrlhf.models.policy import PromptBatch, _row_keys, prompt_groups

PROMPTS = ["What number is written?", "What number is written in the image? Read the digits."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = load_policy(build_policy_preset("tiny", tmp_path_factory.mktemp("policy") / "tiny", seed=0))
    return model.eval(), processor


def _grouped_batch(processor, samples):
    """3 prompts of different lengths and images, each repeated ``samples`` times, rows interleaved."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(3)]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]  # rows 0 and 2: same text, other image
    order = [i for _ in range(samples) for i in range(3)]
    return encode_prompts(processor, [images[i] for i in order], [prompts[i] for i in order])


def test_prompt_groups_finds_each_distinct_prompt_in_order_of_first_row():
    ids = torch.tensor([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4]])
    pixels = torch.zeros(5, 3, 2, 2)
    pixels[3, 0, 0, 0] = 1.0  # row 3: the same tokens as rows 0-1, another image
    first, inverse = prompt_groups(PromptBatch(ids, torch.ones_like(ids), {"pixel_values": pixels}))
    assert first.tolist() == [0, 2, 3]
    assert inverse.tolist() == [0, 0, 1, 2, 1]


def _per_row_reference(model, batch, response_ids, response_mask):
    """Slow reference: one forward per row, alone (no other row, so no sharing)."""
    rows = [response_distribution(model, batch.rows(torch.tensor([i])), response_ids[i:i + 1], response_mask[i:i + 1])
            for i in range(len(response_ids))]
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def test_shared_prompt_forward_equals_one_forward_per_row_with_padding(tiny):
    model, processor = tiny
    batch = _grouped_batch(processor, samples=2)
    out = generate(model, processor, batch, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    response_mask = out.response_mask.clone()
    response_mask[0, 2:] = 0  # a shorter response: right padding inside a group
    logp, hidden = response_distribution(model, batch, out.response_ids, response_mask)
    ref_logp, ref_hidden = _per_row_reference(model, batch, out.response_ids, response_mask)
    real = response_mask.bool()
    torch.testing.assert_close(logp[real], ref_logp[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], ref_hidden[real], atol=1e-5, rtol=1e-5)


def test_shared_prompt_gradients_equal_one_forward_per_row(tiny):
    model, processor = tiny
    batch = _grouped_batch(processor, samples=2)
    out = generate(model, processor, batch, max_new_tokens=4, generator=torch.Generator().manual_seed(1))
    chosen = out.response_ids[..., None]

    def grads(fn):
        model.zero_grad()
        logp = fn()[0].gather(-1, chosen).squeeze(-1)
        (logp * out.response_mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared = grads(lambda: response_distribution(model, batch, out.response_ids, out.response_mask))
    reference = grads(lambda: _per_row_reference(model, batch, out.response_ids, out.response_mask))
    model.zero_grad()
    assert shared.keys() == reference.keys() and any("vision_tower" in n for n in shared)
    for name in shared:
        torch.testing.assert_close(shared[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)


def test_generation_logprobs_with_shared_prompts_match_teacher_forcing(tiny):
    model, processor = tiny
    batch = _grouped_batch(processor, samples=3)
    out = generate(model, processor, batch, max_new_tokens=6, generator=torch.Generator().manual_seed(2))
    logp, _ = response_distribution(model, batch, out.response_ids, out.response_mask)
    learner = logp.gather(-1, out.response_ids[..., None]).squeeze(-1) * out.response_mask
    torch.testing.assert_close(out.logprobs, learner, atol=1e-5, rtol=1e-5)


def _reference_groups(batch):
    """Slow, obvious: each row joins the first earlier row equal to it in every tensor."""
    tensors = [batch.input_ids, batch.attention_mask, *batch.vision.values()]
    first, inverse = [], []
    for row in range(len(batch.input_ids)):
        match = next((g for g, f in enumerate(first) if all(torch.equal(t[row], t[f]) for t in tensors)), None)
        if match is None:
            first.append(row)
            match = len(first) - 1
        inverse.append(match)
    return first, inverse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_prompt_groups_match_a_row_by_row_reference_on_random_batches(dtype):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        distinct = int(torch.randint(1, 6, (1,), generator=gen))
        ids = torch.randint(0, 3, (distinct, 4), generator=gen)  # few token values: equal texts happen
        pixels = torch.randint(0, 2, (distinct, 3, 5, 7), generator=gen).to(dtype)  # 105 elements: a remainder
        grid = torch.randint(0, 2, (distinct, 3), generator=gen)
        rows = torch.randint(0, distinct, (12,), generator=gen)  # repeats in any order
        batch = PromptBatch(ids[rows], torch.ones_like(ids[rows]), {"pixel_values": pixels[rows], "grid": grid[rows]})
        first, inverse = prompt_groups(batch)
        assert (first.tolist(), inverse.tolist()) == _reference_groups(batch), f"trial {trial}"


def test_prompt_groups_keep_apart_images_whose_keys_collide():
    # Bits 1,0,0,1 and 0,1,1,0 within one run sum alike: the keys collide, the element check parts them.
    bits = torch.zeros(2, 32, dtype=torch.int32)
    bits[0, [0, 3]] = 1
    bits[1, [1, 2]] = 1
    ids = torch.ones(3, 2, dtype=torch.int64)
    keys = _row_keys(bits.view(torch.float32))
    assert torch.equal(keys[0], keys[1])
    batch = PromptBatch(ids, ids, {"pixel_values": bits.view(torch.float32)[[0, 1, 0]]})
    first, inverse = prompt_groups(batch)
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0]
