"""Tiny random models of each VLM family, built from the family's transformers config and
processor classes with a tokenizer trained here (`mmrlhf.models.tokenizer`), saved with
`save_pretrained`: `load_policy(folder)` loads them as it loads real checkpoints. No download.

Each builder takes the output folder and returns it. The chat templates are the families' own
(their published checkpoints'), trimmed to what one user turn with one image uses.
"""

from __future__ import annotations

from pathlib import Path

from mmrlhf.models.presets import save_random_policy
from mmrlhf.models.qwen_preset import CHAT_WORDS, QWEN2_VL_CHAT_TEMPLATE, qwen_token_ids, qwen_tokenizer
from mmrlhf.models.tokenizer import default_corpus, train_tokenizer

# a one-layer ViT on 32-pixel images of 8-pixel patches (16 patches), for the CLIP/SigLIP towers
VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32,
       "patch_size": 8}
def _text(tokenizer, **extra) -> dict:
    """A 2-layer, 64-wide decoder with 4 heads of 16 (2 kv heads), 256 positions."""
    return {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, **extra}


def _build_qwen(names: tuple[str, str, str, str], vision: dict, out_dir: str | Path, seed: int,
                head_dim: dict | None = None) -> Path:
    """A Qwen-VL model: 4-pixel patches merged 2x2 (a 32x32 image is 16 image tokens), mrope
    sections (2, 3, 3) over the 16-wide heads. names: the config, model, processor and video
    processor classes."""
    import transformers

    config_cls, model_cls, processor_cls, video_cls = (getattr(transformers, n) for n in names)
    tokenizer = qwen_tokenizer()
    pixels = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 16 * 16,
              "max_pixels": 64 * 64}
    processor = processor_cls(image_processor=transformers.Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                              video_processor=video_cls(**pixels), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3]}
    config = config_cls(text_config=_text(tokenizer, rope_parameters=rope, **(head_dim or {})),
                        vision_config={"depth": 1, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2,
                                       "temporal_patch_size": 2, **vision},
                        **qwen_token_ids(tokenizer))
    return save_random_policy(model_cls, config, processor, out_dir, seed)


def build_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-VL (Wang et al. 2024)."""
    return _build_qwen(("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor",
                        "Qwen2VLVideoProcessor"),
                       {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}, out_dir, seed)


def build_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2.5-VL: windowed attention in the vision tower (window 8 px here), block 0 full."""
    return _build_qwen(("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                        "Qwen2VLVideoProcessor"),
                       {"hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "window_size": 16,
                        "fullatt_block_indexes": [0]}, out_dir, seed)


def build_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen3-VL: learned vision position embeddings and DeepStack features from block 0."""
    return _build_qwen(("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
                        "Qwen3VLVideoProcessor"),
                       {"hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64,
                        "num_position_embeddings": 256, "deepstack_visual_indexes": [0]}, out_dir, seed,
                       {"head_dim": 16})


IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3(out_dir: str | Path, seed: int = 0) -> Path:
    """Idefics3 (SmolVLM's architecture): 32-pixel crops of 8-pixel patches, pixel shuffle 2, so
    each crop and the global view are 4 image tokens; up to 2 x 2 crops."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    rows = tuple(f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2))
    tokenizer = train_tokenizer(default_corpus() + CHAT_WORDS, control_tokens=(
        "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", *rows))
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    config = Idefics3Config(
        text_config=_text(tokenizer, model_type="llama"),
        vision_config=VIT,
        scale_factor=2, image_token_id=tokenizer.image_token_id)
    return save_random_policy(Idefics3ForConditionalGeneration, config, processor, out_dir, seed)


LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]  # the any-resolution grids, in pixels


def build_llava_onevision(out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-OneVision: a SigLIP tower on 32-pixel tiles of 8-pixel patches (16 tokens a tile),
    any-resolution grids up to 2 x 2 tiles, a Qwen2 LM."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    tokenizer = train_tokenizer(default_corpus() + CHAT_WORDS, named_tokens={"video_token": "<video>"},
                                control_tokens=("<|im_start|>", "<|im_end|>"))
    pixels = {"size": {"height": 32, "width": 32}}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=PINPOINTS, **pixels), tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(**pixels), num_image_tokens=16,
        vision_feature_select_strategy="full", chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE)
    config = LlavaOnevisionConfig(
        text_config=_text(tokenizer, model_type="qwen2"),
        vision_config={"model_type": "siglip_vision_model", **VIT},
        image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_token_index=tokenizer.image_token_id, video_token_index=tokenizer.convert_tokens_to_ids("<video>"))
    return save_random_policy(LlavaOnevisionForConditionalGeneration, config, processor, out_dir, seed)


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3(out_dir: str | Path, seed: int = 0) -> Path:
    """Gemma 3: a SigLIP tower on 32-pixel images of 8-pixel patches, pooled 2 x 2 to 4 soft tokens."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tokenizer = train_tokenizer(default_corpus() + CHAT_WORDS + ["model"], named_tokens={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        control_tokens=("<start_of_turn>", "<end_of_turn>"))
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, image_seq_length=4, chat_template=GEMMA3_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=_text(tokenizer, head_dim=16, query_pre_attn_scalar=16),
        vision_config=VIT,
        mm_tokens_per_image=4, image_token_index=tokenizer.image_token_id,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"))
    return save_random_policy(Gemma3ForConditionalGeneration, config, processor, out_dir, seed)


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _build_llava(names: tuple[str, str, str, str], out_dir: str | Path, seed: int, **grids) -> Path:
    """A CLIP tower on 32-pixel images of 8-pixel patches (its CLS token dropped: 16 image tokens
    a tile), an MLP projector, a Llama LM; the template leaves bos to the tokenizer. names: the
    image processor, processor, config and model classes; grids: NeXT's ``image_grid_pinpoints``."""
    import transformers

    image_processor_cls, processor_cls, config_cls, model_cls = (getattr(transformers, n) for n in names)
    tokenizer = train_tokenizer(default_corpus() + CHAT_WORDS)
    image_processor = image_processor_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **grids)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_CHAT_TEMPLATE)
    config = config_cls(
        text_config=_text(tokenizer, model_type="llama"),
        vision_config={"model_type": "clip_vision_model", **VIT, "projection_dim": 32},
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_token_index=tokenizer.image_token_id,
        **grids)
    return save_random_policy(model_cls, config, processor, out_dir, seed)


def build_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-1.5 (Liu et al. 2023)."""
    return _build_llava(("CLIPImageProcessor", "LlavaProcessor", "LlavaConfig", "LlavaForConditionalGeneration"),
                        out_dir, seed)


def build_llava_next(out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-NeXT: LLaVA-1.5's tower and template with any-resolution grids up to 2 x 2 tiles."""
    return _build_llava(("LlavaNextImageProcessor", "LlavaNextProcessor", "LlavaNextConfig",
                         "LlavaNextForConditionalGeneration"), out_dir, seed, image_grid_pinpoints=PINPOINTS)
