"""Named model presets built from configs, and resolution of names to loadable folders.

`tiny` (< 1M parameters, tests) and `small` (a few million, CPU demo) exist for the policy
(LLaVA: CLIP vision tower + Llama LM, Liu et al. 2023) and for the reward model (open_clip CLIP
+ head, `mmrlhf.models.reward`). Built folders load with the same `from_pretrained` code as real
checkpoints, so nothing downstream knows whether a model is a preset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor)

from mmrlhf.models.reward import RewardModel, register_clip_config
from mmrlhf.models.tokenizer import train_tokenizer

IMAGE_SIZE = 64  # pixels, square; the digits task renders 64x64
PATCH_SIZE = 16  # (64 / 16)^2 = 16 image tokens per prompt
# Presets see pixels in [0, 1], so a black background is exactly 0. With CLIP's mean/std the
# background becomes about -1.8 and swamps the digit strokes in every patch embedding: measured
# here, a from-scratch vision tower then did not learn single digits in 300 steps, and did with this.
UNIT_PIXELS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass(frozen=True)
class PolicyPreset:
    """Sizes of a LLaVA policy: CLIP vision tower, then a Llama LM."""

    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    max_positions: int = 256  # image tokens + prompt + response


@dataclass(frozen=True)
class RewardPreset:
    """Sizes of a CLIP reward model (open_clip ViT + text transformer) and its head."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    text_width: int  # the token table is 49,408 x text_width (open_clip's BPE), most of the parameters
    text_layers: int
    text_heads: int
    head_hidden: int
    context_length: int = 32  # text tokens, start and end included

    def clip_config(self) -> dict:
        """The open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "layers": self.vision_layers,
                           "width": self.vision_width, "head_width": self.vision_head_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


POLICY_PRESETS = {
    "tiny": PolicyPreset(32, 1, 2, 64, 64, 2, 2, 128),
    "small": PolicyPreset(128, 3, 4, 256, 192, 2, 4, 384),
}
REWARD_PRESETS = {
    "tiny": RewardPreset(32, 32, 1, 16, 16, 1, 2, 32),
    "small": RewardPreset(64, 128, 2, 32, 64, 2, 2, 64, context_length=12),
}


def _lookup(presets: dict, name: str, kind: str):
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def build_policy_preset(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the policy preset `name` with random weights (seeded) and save it to `out_dir`.

    Saves model (config + safetensors), tokenizer (trained here, `mmrlhf.models.tokenizer`)
    and `LlavaProcessor` with `save_pretrained`; `load_policy(out_dir)` loads them. The
    processor expands "<image>" to (64 / 8)^2 + 1 CLS - 1 dropped by "default" = 64 tokens, as the model.
    The global torch RNG is left untouched. Raises ValueError for an unknown name.
    """
    spec = _lookup(POLICY_PRESETS, name, "policy")
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer()
    image_processor = CLIPImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         image_mean=UNIT_PIXELS["mean"], image_std=UNIT_PIXELS["std"],
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.text_hidden,
                       intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                       num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads,
                       max_position_embeddings=spec.max_positions, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-1)  # the last layer: the default -2 would waste half a 2-layer tower
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_reward_preset(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the reward preset `name` (open_clip model "mmrlhf-reward-<name>") and save it to `out_dir`.

    Writes `config.json` + `model.safetensors`; `RewardModel.from_pretrained(out_dir)` loads it.
    The global torch RNG is left untouched. Raises ValueError for an unknown name.
    """
    spec = _lookup(REWARD_PRESETS, name, "reward")
    clip_name = f"mmrlhf-reward-{name}"
    register_clip_config(clip_name, spec.clip_config())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RewardModel(clip_name, pretrained=None, head_hidden=spec.head_hidden, preprocess_cfg=UNIT_PIXELS)
    return model.save_pretrained(out_dir)


def _build_once(build, name: str, final: Path) -> Path:
    """Build into a temporary sibling folder, then rename it to `final` (atomic); reuse `final` if it exists."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(name, tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.exists():  # a concurrent builder winning the rename is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_policy(name_or_path: str | Path, cache_dir: str | Path) -> str:
    """A policy preset name -> its folder `cache_dir/policy-<name>`, built once; else unchanged.

    Anything that is not a preset name (a local folder, a hub name such as
    "llava-hf/llava-interleave-qwen-0.5b-hf") passes through for `load_policy`.
    """
    if str(name_or_path) not in POLICY_PRESETS:
        return str(name_or_path)
    return str(_build_once(build_policy_preset, str(name_or_path), Path(cache_dir) / f"policy-{name_or_path}"))


def resolve_reward(name_or_path: str | Path, cache_dir: str | Path) -> str:
    """A reward preset name -> its folder `cache_dir/reward-<name>`, built once; else unchanged."""
    if str(name_or_path) not in REWARD_PRESETS:
        return str(name_or_path)
    return str(_build_once(build_reward_preset, str(name_or_path), Path(cache_dir) / f"reward-{name_or_path}"))
