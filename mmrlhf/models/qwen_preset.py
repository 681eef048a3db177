"""The ``qwen2-vl-tiny`` policy preset: a small random Qwen2-VL (Wang et al. 2024) built from
``Qwen2VLConfig`` with its own ``Qwen2VLProcessor`` (image and video processors), for the video
summarisation job on CPU (``jobs/digits_video.yaml``).

Saved with ``save_pretrained`` like the other presets (:mod:`mmrlhf.models.presets`), so
``load_policy`` loads it as it loads a real Qwen2-VL checkpoint; the tokenizer is trained here
(:mod:`mmrlhf.models.tokenizer`) with Qwen's special tokens, and the chat template is Qwen2-VL's
own, trimmed to one user turn with one image or video.

Sizes: 64 px frames in 8 px patches (64 a frame), frames paired into temporal patches and
2 x 2 patches merged, so a 64 px image is 16 tokens and a clip of 2F frames 16F tokens; a 2-block
ViT 64 wide, a 2-layer decoder 128 wide, 512 positions (mrope ids grow by one per temporal patch
of a video, not per token).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                          Qwen2VLVideoProcessor)

from mmrlhf.models.tokenizer import default_corpus, train_tokenizer

QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_WORDS = ["system you are a helpful assistant user", "user assistant"]  # the chat templates' words
_PRESET_PIXELS = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 32 * 32,
                  "max_pixels": 64 * 64, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


def qwen_tokenizer(corpus: list[str] | None = None):
    """A word-level tokenizer on ``default_corpus() + corpus`` + the chat words, with Qwen's image,
    video and chat-control tokens (``<|image_pad|>``, ``<|video_pad|>``, ``<|im_start|>`` ...)."""
    return train_tokenizer(default_corpus() + list(corpus or []) + CHAT_WORDS,
                           named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                           control_tokens=("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"))


def qwen_token_ids(tokenizer) -> dict[str, int]:
    """The config's ``image_token_id``, ``video_token_id``, ``vision_start_token_id``, ``vision_end_token_id``."""
    ids = tokenizer.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


def build_qwen2_vl_preset(name: str, out_dir: str | Path, seed: int = 0, corpus: list[str] | None = None) -> Path:
    """Build the ``qwen2-vl-tiny`` policy (random weights, seeded) and save it to ``out_dir``.

    corpus: the data's texts, added to the tokenizer's (:func:`qwen_tokenizer`). The global torch
    RNG is left untouched. Raises ValueError for another ``name``.
    """
    from mmrlhf.models.presets import save_random_policy  # presets resolves this builder by name

    if name != "qwen2-vl-tiny":
        raise ValueError(f"unknown Qwen2-VL preset {name!r}; choose 'qwen2-vl-tiny'")
    tokenizer = qwen_tokenizer(corpus)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**_PRESET_PIXELS), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**_PRESET_PIXELS),
                                 chat_template=QWEN2_VL_CHAT_TEMPLATE)
    text = {"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6]}}  # 32-wide heads: 16 pairs
    vision = {"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 2, "patch_size": 8,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    return save_random_policy(Qwen2VLForConditionalGeneration, config, processor, out_dir, seed)
