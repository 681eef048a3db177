"""The video path of the families that have one (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: ``videos=``,
``pixel_values_videos``, ``video_grid_thw``, mrope over the video grid), and the refusal of the others.
Tiny random models built from each family's config and processor classes (`builders.py`)."""

import numpy as np
import pytest
import torch

from mmrlhf.models import encode_prompts, generate, load_policy, response_logprobs
from mmrlhf.models.families import family_for, video_model_types
from mmrlhf.models.policy import pooled_image_features
from mmrlhf.models.presets import resolve_policy
from tests.models.families import builders

PROMPTS = ["Summarize the video.", "What number is written?", "Describe the image. What is in this picture?"]
CLIPS = [(4, 32, 32), (3, 32, 48), (6, 24, 32)]  # (F, H, W): different frame counts and sizes, so different grids


def _clips(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (f, h, w, 3), dtype=np.uint8) for f, h, w in CLIPS]


@pytest.fixture(scope="module", params=video_model_types())
def video_policy(request, tmp_path_factory):
    folder = getattr(builders, f"build_{request.param}")(tmp_path_factory.mktemp(request.param) / "policy")
    model, processor = load_policy(folder)
    return model.eval(), processor


def test_the_qwen_families_are_the_ones_with_a_video_path():
    assert video_model_types() == ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


def test_a_video_batch_travels_row_batched_with_its_grid_and_video_token_types(video_policy):
    model, processor = video_policy
    family = family_for(model)
    batch = encode_prompts(processor, _clips(), PROMPTS)
    assert all(v.shape[0] == len(PROMPTS) for v in batch.vision.values())
    grid = batch.vision["video_grid_thw"]
    assert "pixel_values" not in batch.vision and grid.shape == (3, 3)
    types = family.mm_token_type_ids(batch.input_ids)
    merge = model.config.vision_config.spatial_merge_size ** 2
    assert (types == 2).sum(1).tolist() == (grid.prod(-1) // merge).tolist()  # one video token per merged patch
    assert (types == 1).sum() == 0
    enc = processor(videos=_clips(), text=[family.chat_prompt(processor, p, video=True) for p in PROMPTS],
                    return_tensors="pt", padding=True)
    assert torch.equal(enc["mm_token_type_ids"].int(), types)  # as the processor writes them


def test_behaviour_logprobs_equal_teacher_forced_on_a_left_padded_video_batch(video_policy):
    model, processor = video_policy
    batch = encode_prompts(processor, _clips(), PROMPTS)
    assert not batch.attention_mask[:, 0].all()  # left-padded
    settings = {"temperature": 0.8, "top_p": 0.9, "top_k": 20}
    gen = generate(model, processor, batch, 8, generator=torch.Generator().manual_seed(0), **settings)
    logprobs, _, _ = response_logprobs(model, batch, gen.response_ids, gen.response_mask, **settings)
    mask = gen.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], gen.logprobs[mask], atol=1e-4, rtol=0)


def test_each_video_row_scores_as_in_a_batch_of_its_own(video_policy):
    model, processor = video_policy
    clips = _clips(1)
    batch = encode_prompts(processor, clips, PROMPTS)
    response_ids = torch.full((3, 3), processor.tokenizer.convert_tokens_to_ids("four"))
    response_mask = torch.ones_like(response_ids)
    with torch.no_grad():
        together, _, _ = response_logprobs(model, batch, response_ids, response_mask)
        alone = torch.cat([response_logprobs(model, encode_prompts(processor, clips[i:i + 1], PROMPTS[i:i + 1]),
                                             response_ids[i:i + 1], response_mask[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


def test_pooled_features_of_a_video_are_the_mean_of_its_video_tokens(video_policy):
    model, processor = video_policy
    batch = encode_prompts(processor, _clips()[:2], PROMPTS[:2])
    with torch.no_grad():
        pooled = pooled_image_features(model, batch.vision)
        one = pooled_image_features(model, encode_prompts(processor, _clips()[1:2], PROMPTS[1:2]).vision)
    assert pooled.shape == (2, model.config.text_config.hidden_size)
    torch.testing.assert_close(pooled[1:], one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [builders.build_llava, builders.build_gemma3], ids=["llava", "gemma3"])
def test_a_family_without_a_video_path_refuses_a_video_naming_itself_and_the_ones_that_take_video(build, tmp_path):
    model, processor = load_policy(build(tmp_path / "policy"))
    with pytest.raises(ValueError, match=r"is a video, but the \w+ family \(model_type '\w+'\) has no video path; "
                                         r"families that take video: qwen2_5_vl, qwen2_vl, qwen3_vl$"):
        encode_prompts(processor, _clips()[:1], PROMPTS[:1])


def test_a_batch_mixing_images_and_videos_is_refused(video_policy):
    _, processor = video_policy
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"rows 0 \(a video\) and 1 \(an image\) in one batch"):
        encode_prompts(processor, [_clips()[0], image], PROMPTS[:2])


def test_the_qwen2_vl_preset_is_built_from_config_and_loads_with_from_pretrained(tmp_path):
    folder = resolve_policy("qwen2-vl-tiny", tmp_path, corpus=["Summarize the video.", "four then seven"])
    model, processor = load_policy(folder)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert processor.tokenizer.convert_tokens_to_ids("then") != processor.tokenizer.unk_token_id
    clip = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    batch = encode_prompts(processor, [clip], ["Summarize the video."])
    assert batch.vision["video_grid_thw"].tolist() == [[3, 8, 8]]  # 2 frames a temporal patch, 8 px patches
