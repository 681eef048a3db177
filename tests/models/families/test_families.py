"""Every VLM family through the one seam: tiny random models built from each family's config and
processor classes (`builders.py`), saved and reloaded with `from_pretrained` (`load_policy`)."""

import numpy as np
import pytest
import torch

from mmrlhf.models import ActorCritic, PromptBatch, encode_prompts, generate, load_policy, response_logprobs
from mmrlhf.models.families import family_for
from mmrlhf.models.families.base import adds_special_tokens
from mmrlhf.models.sampling import Sampling, token_logprobs
from mmrlhf.sync import load_state_dict_strict
from mmrlhf.types import cat_rows, pad_cat
from tests.models.families import builders

FAMILIES = {name[len("build_"):]: getattr(builders, name) for name in dir(builders) if name.startswith("build_")}
PROMPTS = ["What number is written?", "Read the digits in the image.", "Describe the image. What is in this picture?"]
SIZES = [(32, 32), (48, 40), (24, 56)]  # (H, W): each image gives a different number of image tokens where it can
SETTINGS = [Sampling(), Sampling(temperature=0.8, top_p=0.9, top_k=20)]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def policy(request, tmp_path_factory):
    folder = FAMILIES[request.param](tmp_path_factory.mktemp(request.param) / "policy")
    model, processor = load_policy(folder)
    return model.eval(), processor


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def test_the_chat_prompt_holds_the_placeholder_the_processor_expands(policy):
    model, processor = policy
    family = family_for(model)
    text = family.chat_prompt(processor, PROMPTS[0])
    assert text.count(processor.image_token) >= 1 and PROMPTS[0] in text
    batch = encode_prompts(processor, _images(), PROMPTS)
    image_tokens = torch.isin(batch.input_ids, torch.tensor(family.image_token_ids)).sum(1)
    assert (image_tokens > 0).all()
    assert all(v.shape[0] == len(PROMPTS) for v in batch.vision.values())  # row-batched


@pytest.mark.parametrize("sampling", SETTINGS, ids=["plain", "top_p_top_k"])
def test_behaviour_logprobs_equal_teacher_forced_on_a_left_padded_batch(policy, sampling):
    model, processor = policy
    batch = encode_prompts(processor, _images(), PROMPTS)
    assert not batch.attention_mask[:, 0].all()  # left-padded: prompts of different lengths
    gen = generate(model, processor, batch, 8, generator=torch.Generator().manual_seed(0), **sampling.kwargs())
    logprobs, _, _ = response_logprobs(model, batch, gen.response_ids, gen.response_mask, **sampling.kwargs())
    mask = gen.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], gen.logprobs[mask], atol=1e-4, rtol=0)


def test_repeated_prompts_share_one_prefill_with_the_same_logprobs_as_one_row_alone(policy):
    model, processor = policy
    order = [0, 1, 2, 0, 1, 2, 0]  # each prompt repeated, as a rollout's samples are
    images = _images()
    batch = encode_prompts(processor, [images[i] for i in order], [PROMPTS[i] for i in order])
    gen = generate(model, processor, batch, 6, generator=torch.Generator().manual_seed(1))
    shared, _, _ = response_logprobs(model, batch, gen.response_ids, gen.response_mask)
    alone = torch.cat([response_logprobs(model, batch.rows(torch.tensor([i])), gen.response_ids[i:i + 1],
                                         gen.response_mask[i:i + 1])[0] for i in range(len(order))])
    mask = gen.response_mask.bool()
    torch.testing.assert_close(shared[mask], alone[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(gen.logprobs[mask], alone[mask], atol=1e-4, rtol=0)


def test_top_p_top_k_sampling_is_reproducible_with_a_seeded_generator(policy):
    model, processor = policy
    batch = encode_prompts(processor, _images(), PROMPTS)
    settings = {"temperature": 1.5, "top_p": 0.95, "top_k": 30}
    runs = [generate(model, processor, batch, 8, generator=torch.Generator().manual_seed(3), **settings)
            for _ in range(2)]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)


def test_a_plain_forward_agrees_after_the_stated_renormalisation(policy):
    model, processor = policy
    family = family_for(model)
    sampling = SETTINGS[1]
    image, prompt = _images()[1], PROMPTS[1]
    batch = encode_prompts(processor, [image], [prompt])  # one row: no padding, so default positions apply
    gen = generate(model, processor, batch, 6, generator=torch.Generator().manual_seed(1), **sampling.kwargs())
    text = family.chat_prompt(processor, prompt)
    enc = processor(images=family.processor_images([image]), text=[text], return_tensors="pt",
                    add_special_tokens=adds_special_tokens(processor, text))
    assert torch.equal(enc["input_ids"], batch.input_ids)
    n = int(gen.response_mask.sum())
    enc["input_ids"] = torch.cat([enc["input_ids"], gen.response_ids[:, :n]], 1)
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in enc:
            enc[key] = torch.cat([enc[key], torch.zeros_like(gen.response_ids[:, :n])], 1)
    with torch.no_grad():
        logits = model(**enc).logits[:, -n - 1:-1]  # (1, n, V): the positions predicting the response
    expected = token_logprobs(logits, sampling, family.image_token_ids).gather(-1, gen.response_ids[:, :n, None])
    torch.testing.assert_close(expected[..., 0], gen.logprobs[:, :n], atol=1e-4, rtol=0)


def test_weight_sync_sends_the_names_the_rollout_side_loads(policy, tmp_path):
    model, processor = policy
    wrapped = ActorCritic(model)
    sent = {k[len("policy."):]: v for k, v in wrapped.state_dict().items() if k.startswith("policy.")}
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    replica, _ = load_policy(tmp_path)
    load_state_dict_strict(replica, sent)
    assert sent.keys() == replica.state_dict().keys()


def test_batches_of_different_image_sizes_joined_row_by_row_score_as_apart(policy):
    """What Rollout.concat and the replay buffer do: prompts re-left-padded, image tensors padded
    at the end of every dim (types.cat_rows); each row must score as in its own batch."""
    model, processor = policy
    images = _images()
    parts = [encode_prompts(processor, images[:1], PROMPTS[:1]), encode_prompts(processor, images[1:], PROMPTS[1:])]
    pad = processor.tokenizer.pad_token_id
    joined = PromptBatch(pad_cat([p.input_ids for p in parts], pad, left=True),
                         pad_cat([p.attention_mask for p in parts], 0, left=True),
                         {k: cat_rows([p.vision[k] for p in parts]) for k in parts[0].vision})
    response_ids = torch.full((3, 3), processor.tokenizer.convert_tokens_to_ids("four"))
    response_mask = torch.ones_like(response_ids)
    with torch.no_grad():
        together, _, _ = response_logprobs(model, joined, response_ids, response_mask)
        apart = torch.cat([response_logprobs(model, p, response_ids[:len(p.input_ids)],
                                             response_mask[:len(p.input_ids)])[0] for p in parts])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=0)
