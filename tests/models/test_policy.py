"""Policy: preset round trip, padded-batch generation, and log-prob consistency (tiny preset)."""

import pickle

import numpy as np
import pytest
import torch

from mmrlhf.models import (build_policy_preset, encode_prompts, encode_responses, generate, load_policy,
                           response_logprobs)
from mmrlhf.models.families import family_for
from mmrlhf.models.policy import check_positions_fit, pooled_image_features

PROMPTS = ["What number is written?", "What number is written in the image? Read the digits."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_policy_preset("tiny", tmp_path_factory.mktemp("policy") / "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model, processor = load_policy(tiny_dir)
    return model.eval(), processor


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(n)]


def _bias_token(model, token_id, row_bias):
    """Add row_bias[b] to the logit of token_id in row b in every lm_head call (generation and teacher forcing)."""

    def hook(module, inputs, output):
        shape = (-1,) + (1,) * (output.dim() - 2)
        output = output.clone()
        output[..., token_id] += row_bias.view(shape)
        return output

    return model.get_output_embeddings().register_forward_hook(hook)



def test_pickled_weights_are_refused_only_safetensors_load(tiny_dir, tmp_path, pickle_payload):
    model, processor = load_policy(tiny_dir)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    sentinel, trap = pickle_payload
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(trap))
    with pytest.raises(OSError, match="safetensors"):
        load_policy(tmp_path)
    assert not sentinel.exists()


def test_literal_image_placeholder_in_prompt_is_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="prompt 1: holds a literal '<image>'"):
        encode_prompts(processor, _images(2), ["What is it?", "What does <image> mean in HTML?"])


def test_policy_save_load_round_trip(tiny_dir, tmp_path):
    model, processor = load_policy(tiny_dir)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2, processor2 = load_policy(tmp_path)

    sd, sd2 = model.state_dict(), model2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[key], sd2[key]) for key in sd)
    texts = ["<image>\nWhat number is written?\n", "four one seven </s>", "unheard-of words"]
    assert processor.tokenizer(texts)["input_ids"] == processor2.tokenizer(texts)["input_ids"]
    a, b = encode_prompts(processor, _images(2), PROMPTS), encode_prompts(processor2, _images(2), PROMPTS)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert a.vision.keys() == b.vision.keys() and all(torch.equal(a.vision[k], b.vision[k]) for k in a.vision)


def test_tiny_policy_under_1m_params_and_small_between_1m_and_10m(tiny, tmp_path):
    assert sum(p.numel() for p in tiny[0].parameters()) < 1_000_000
    small, _ = load_policy(build_policy_preset("small", tmp_path / "small"))
    assert 1_000_000 < sum(p.numel() for p in small.parameters()) < 10_000_000


def test_encode_prompts_left_pads_and_expands_the_image_to_one_token_per_feature_cell(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(2) + [np.zeros((64, 64, 3), np.uint8)], PROMPTS + ["Describe."])
    assert batch.vision["pixel_values"].shape == (3, 3, 64, 64)
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[0, 0]
    image_id = model.config.image_token_id
    assert ((batch.input_ids == image_id).sum(1) == model.config.image_seq_length).all()
    assert pooled_image_features(model, batch.vision).shape == (3, model.config.text_config.hidden_size)
    assert (batch.input_ids[batch.attention_mask == 0] == processor.tokenizer.pad_token_id).all()


def test_encode_prompts_names_the_bad_image_or_empty_prompt(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="image 1: dtype is float32"):
        encode_prompts(processor, [_images(1)[0], np.zeros((64, 64), np.float32)], PROMPTS)
    with pytest.raises(ValueError, match="prompt 1: empty"):
        encode_prompts(processor, _images(2), [PROMPTS[0], "  "])


def test_encode_responses_appends_eos_and_right_pads(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    ids, mask = encode_responses(processor, ["four one seven", "two"], max_len=8)
    words = tok.convert_tokens_to_ids(["four", "one", "seven", "two"])
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert ids.tolist() == [words[:3] + [eos], [words[3], eos, pad, pad]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    cut, cut_mask = encode_responses(processor, ["four one seven"], max_len=2)
    assert cut.tolist() == [words[:2]] and cut_mask.tolist() == [[1, 1]]


def test_generate_left_padded_batch(tiny):
    model, processor = tiny
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    batch = encode_prompts(processor, _images(2), PROMPTS)
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # row 0 is padded

    hook = _bias_token(model, eos, torch.tensor([100.0, -100.0]))  # row 0 stops at once, row 1 never
    try:
        gen = generate(model, processor, batch, max_new_tokens=5, do_sample=False)
    finally:
        hook.remove()
    assert gen.response_ids.shape == gen.logprobs.shape == gen.response_mask.shape == (2, 5)
    assert gen.finish_reason == ["eos", "length"]
    assert gen.response_mask.tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert gen.response_ids[0].tolist() == [eos] + [pad] * 4
    assert (gen.logprobs[0, 1:] == 0).all() and gen.texts[0] == ""
    assert len(gen.texts[1].split()) <= 5

    together = generate(model, processor, batch, max_new_tokens=6, do_sample=False)
    for i, (image, prompt) in enumerate(zip(_images(2), PROMPTS)):
        alone = generate(model, processor, encode_prompts(processor, [image], [prompt]), 6, do_sample=False)
        n = int(alone.response_mask.sum())
        assert together.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
        torch.testing.assert_close(together.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-5, rtol=0)
        assert together.texts[i] == alone.texts[0]


def test_the_image_placeholder_is_never_sampled(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(2), PROMPTS)
    image_id = model.config.image_token_id
    hook = _bias_token(model, image_id, torch.tensor([50.0, 50.0]))  # it would be nearly every token
    try:
        gen = generate(model, processor, batch, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
        logprobs, entropy, _ = response_logprobs(model, batch, gen.response_ids, gen.response_mask)
    finally:
        hook.remove()
    assert not (gen.response_ids == image_id).any()
    assert torch.isfinite(gen.logprobs).all() and torch.isfinite(logprobs).all() and torch.isfinite(entropy).all()
    torch.testing.assert_close(logprobs * gen.response_mask, gen.logprobs, atol=1e-5, rtol=0)


def test_sampling_is_reproducible_with_a_seeded_generator(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(2), PROMPTS)
    runs = [generate(model, processor, batch, 8, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    other = generate(model, processor, batch, 8, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0].response_ids, other.response_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_generation_logprobs_match_teacher_forced(tiny, temperature):
    model, processor = tiny
    eos = processor.tokenizer.eos_token_id
    batch = encode_prompts(processor, _images(3, seed=1), PROMPTS + ["Describe the image."])
    hook = _bias_token(model, eos, torch.tensor([3.0, 0.0, -100.0]))  # some rows end early, with padding after
    try:
        gen = generate(model, processor, batch, 10, temperature=temperature, generator=torch.Generator().manual_seed(0))
        logprobs, entropy, hidden = response_logprobs(model, batch, gen.response_ids, gen.response_mask,
                                                      temperature=temperature, return_hidden=True)
    finally:
        hook.remove()
    mask = gen.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], gen.logprobs[mask], atol=1e-4, rtol=0)
    assert entropy.shape == hidden.shape[:2] == gen.response_ids.shape
    assert hidden.shape[-1] == model.config.text_config.hidden_size
    assert (entropy[mask] > 0).all() and (entropy[mask] <= np.log(model.config.text_config.vocab_size) + 1e-4).all()


def test_response_logprobs_gradients_reach_vision_tower_and_lm(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(2), PROMPTS)
    ids, mask = encode_responses(processor, ["four one seven", "two"], max_len=8)
    logprobs, _, _ = response_logprobs(model, batch, ids, mask)
    sft_loss = -(logprobs * mask).sum() / mask.sum()
    model.zero_grad()
    sft_loss.backward()
    stem = next(model.model.vision_tower.parameters())  # the tower's first layer (ResNet stem, ViT patch embedding)
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad()


def test_temperature_must_be_positive(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(1), PROMPTS[:1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(model, processor, batch, 4, temperature=0.0)


def _pre_family_logprobs(model, batch, response_ids, response_mask, temperature):
    """The policy's log-probs as computed before the family seam: "<image>\\n{prompt}\\n" prompts,
    1-D positions over real tokens, the image token's logit set to the float32 minimum."""
    input_ids = torch.cat([batch.input_ids, response_ids], 1)
    attention_mask = torch.cat([batch.attention_mask, response_mask], 1)
    out = model.model(input_ids=input_ids, pixel_values=batch.vision["pixel_values"], attention_mask=attention_mask,
                      position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0))
    logits = model.get_output_embeddings()(out.last_hidden_state[:, batch.input_ids.shape[1] - 1:-1]).float()
    logits = (logits / temperature).index_fill(-1, torch.tensor([model.config.image_token_id]),
                                               torch.finfo(torch.float32).min)
    return torch.log_softmax(logits, -1).gather(-1, response_ids[..., None]).squeeze(-1)


def test_the_presets_prompts_and_logprobs_are_those_of_before_the_family_seam(tiny):
    model, processor = tiny
    images = _images(2)
    batch = encode_prompts(processor, images, PROMPTS)
    before = processor(images=[np.repeat(i[:, :, None], 3, 2) for i in images],
                       text=[f"<image>\n{p}\n" for p in PROMPTS], return_tensors="pt", padding=True)
    assert torch.equal(batch.input_ids, before["input_ids"]) and torch.equal(batch.attention_mask,
                                                                              before["attention_mask"])
    assert torch.equal(batch.vision["pixel_values"], before["pixel_values"])
    gen = generate(model, processor, batch, 6, temperature=0.7, generator=torch.Generator().manual_seed(0))
    logprobs, _, _ = response_logprobs(model, batch, gen.response_ids, gen.response_mask, temperature=0.7)
    assert torch.equal(logprobs, _pre_family_logprobs(model, batch, gen.response_ids, gen.response_mask, 0.7))


def test_image_tokens_prompt_and_max_new_tokens_above_the_position_limit_are_refused(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _images(2), PROMPTS)
    limit = model.config.text_config.max_position_embeddings
    longest = int(batch.attention_mask.sum(1).max())  # 64 image tokens + the longer prompt's
    check_positions_fit(model, batch, limit - longest, ["r0", "r1"], "rl.max_new_tokens")
    n_text = longest - model.config.image_seq_length
    with pytest.raises(ValueError, match=rf"^record r1: 64 image tokens \+ {n_text} prompt tokens \+ "
                                         rf"rl.max_new_tokens={limit - longest + 1} need {limit + 1} positions, "
                                         rf"above the model's limit of {limit} \(1 record\(s\) too long\)"):
        check_positions_fit(model, batch, limit - longest + 1, ["r0", "r1"], "rl.max_new_tokens")


def test_a_model_of_an_unknown_family_is_named_with_the_supported_ones():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=8))
    with pytest.raises(ValueError, match=r"^policy class BertModel \(model_type 'bert'\) has no family adapter; "
                                         r"supported model types: .*fast_vlm.*llava.*qwen2_vl"):
        family_for(bert)


def test_pad_token_id_from_the_tokenizer_alone_is_the_processors(tiny_dir, tiny):
    from mmrlhf.models.policy import pad_token_id

    assert pad_token_id(str(tiny_dir)) == tiny[1].tokenizer.pad_token_id
