"""Named model presets built from configs, and resolution of names to loadable folders.

`tiny` (< 1M parameters, tests) and `small` (about a million, CPU demo) exist for the policy
and for the reward model (open_clip CLIP + head, `mmrlhf.models.reward`); `qwen2-vl-tiny` is a
Qwen2-VL-architecture policy that takes videos (`mmrlhf.models.qwen_preset`).

The policy is LLaVA-shaped (Liu et al. 2023: vision tower -> MLP projector -> causal LM) in
transformers' FastVLM class (`FastVlmForConditionalGeneration`, Vasu et al. 2025), which takes
a convolutional tower and feeds each cell of its last feature map to the LM as one image token.
The tower is a ResNet (He et al. 2016, transformers `ResNetModel`) and the LM a Llama. The
reward model's image tower is CLIP's ResNet variant (open_clip `ModifiedResNet`, Radford et al.
2021). Both are convolutional because the towers are trained here from scratch on a few
hundred labeled scans. Measured on this CPU, classifying single digits placed at random in the
64 px canvas (held-out scans, batches of 32): a small ResNet reached 89% accuracy after 300
steps, a small CLIP ViT (patch 16) 27% after 400; with ViT towers, SFT reached 0.2% exact
match on the digits task. Built folders load with the same `from_pretrained` code as real
checkpoints, so nothing downstream knows whether a model is a preset.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (CLIPImageProcessor, FastVlmConfig, FastVlmForConditionalGeneration, LlamaConfig,
                          LlavaProcessor, ResNetConfig)

from mmrlhf.models.families.llava import PRESET_CHAT_TEMPLATE
from mmrlhf.models.qwen_preset import build_qwen2_vl_preset
from mmrlhf.models.reward import RewardModel, register_clip_config
from mmrlhf.models.tokenizer import default_corpus, train_tokenizer

IMAGE_SIZE = 64  # pixels, square; the digits task renders 64x64
# Presets see pixels in [0, 1], so a black background is exactly 0. With CLIP's mean/std the
# background becomes about -1.8 and swamps the digit strokes in every patch embedding: measured
# here, a from-scratch vision tower then did not learn single digits in 300 steps, and did with this.
UNIT_PIXELS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass(frozen=True)
class PolicyPreset:
    """Sizes of a policy: ResNet vision tower (channels and blocks per stage), then a Llama LM.

    The tower's stride is 4 (stem) x 2 per stage after the first, so two stages give an 8 x 8
    feature map of a 64 px image: 64 image tokens.
    """

    vision_widths: tuple[int, ...]
    vision_depths: tuple[int, ...]
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    max_positions: int = 256  # image tokens + prompt + response


@dataclass(frozen=True)
class RewardPreset:
    """Sizes of a CLIP reward model (open_clip ModifiedResNet + text transformer) and its head.

    vision_layers: residual blocks in each of the 4 stages; vision_width: channels of the stem
    (the last stage has 32x as many); vision_head_width: channels per head of the attention pool.
    """

    embed_dim: int
    vision_width: int
    vision_layers: tuple[int, int, int, int]
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
            "vision_cfg": {"image_size": IMAGE_SIZE, "layers": list(self.vision_layers),
                           "width": self.vision_width, "head_width": self.vision_head_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


POLICY_PRESETS = {
    "tiny": PolicyPreset((16, 32), (1, 1), 64, 2, 2, 128),
    "small": PolicyPreset((32, 64), (1, 1), 192, 2, 4, 512),
}
QWEN_PRESETS = ("qwen2-vl-tiny",)  # Qwen2-VL architecture, video-capable (mmrlhf.models.qwen_preset)
REWARD_PRESETS = {
    "tiny": RewardPreset(32, 4, (1, 1, 1, 1), 16, 16, 1, 2, 32),
    "small": RewardPreset(64, 16, (1, 1, 1, 1), 32, 64, 2, 2, 64, context_length=12),
}


def vision_stride(spec: PolicyPreset) -> int:
    """Pixels per image token along each side: the ResNet stem's 4, doubled by each later stage."""
    return 4 * 2 ** (len(spec.vision_widths) - 1)


def _lookup(presets: dict, name: str, kind: str):
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def build_policy_preset(name: str, out_dir: str | Path, seed: int = 0, corpus: list[str] | None = None) -> Path:
    """Build the policy preset `name` with random weights (seeded) and save it to `out_dir`.

    Saves model (config + safetensors), tokenizer (trained here on `corpus`, default
    `mmrlhf.models.tokenizer.default_corpus()`; see `train_tokenizer`)
    and `LlavaProcessor` with `save_pretrained`, its chat template
    (`families.llava.PRESET_CHAT_TEMPLATE`: "<s><image>\n{prompt}\n") saved with it;
    `load_policy(out_dir)` loads them. The processor expands "<image>" to (64 / stride)^2
    tokens, one per cell of the tower's feature map.
    The global torch RNG is left untouched. Raises ValueError for an unknown name.
    """
    spec = _lookup(POLICY_PRESETS, name, "policy")
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus)
    image_processor = CLIPImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         image_mean=UNIT_PIXELS["mean"], image_std=UNIT_PIXELS["std"],
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False)
    stride = vision_stride(spec)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=stride,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0,
                               chat_template=PRESET_CHAT_TEMPLATE)
    vision = ResNetConfig(num_channels=3, embedding_size=spec.vision_widths[0], hidden_sizes=list(spec.vision_widths),
                          depths=list(spec.vision_depths), layer_type="basic", downsample_in_first_stage=False)
    vision.hidden_size = spec.vision_widths[-1]  # the projector's input width (FastVLM reads it)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.text_hidden,
                       intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                       num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads,
                       max_position_embeddings=spec.max_positions, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = FastVlmConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                           image_seq_length=(IMAGE_SIZE // stride) ** 2)
    return save_random_policy(FastVlmForConditionalGeneration, config, processor, out_dir, seed)


def save_random_policy(model_class, config, processor, out_dir: str | Path, seed: int) -> Path:
    """``model_class(config)`` with random weights (seeded; the global torch RNG is left untouched),
    its generation config's pad/bos/eos ids set from the processor's tokenizer, saved with
    ``processor`` to ``out_dir`` (``save_pretrained``) for `load_policy`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(processor.tokenizer, key))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


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


def _policy_builder(name: str):
    """The builder of policy preset ``name`` (``build_policy_preset`` or the Qwen2-VL one), or None."""
    if name in POLICY_PRESETS:
        return build_policy_preset
    return build_qwen2_vl_preset if name in QWEN_PRESETS else None


def resolve_policy(name_or_path: str | Path, cache_dir: str | Path, corpus: list[str] | None = None) -> str:
    """A policy preset name (``tiny``, ``small``, ``qwen2-vl-tiny``) -> its folder
    `cache_dir/policy-<name>`, built once; else unchanged.

    corpus: texts to train the preset's tokenizer on besides `default_corpus()` (a user's
    prompts and references, so their words are not `<unk>`); the folder is then
    `policy-<name>-<first 12 hex of the corpus's SHA-256>`, one preset per corpus.
    Anything that is not a preset name (a local folder, a hub name such as
    "llava-hf/llava-interleave-qwen-0.5b-hf") passes through for `load_policy`.
    """
    build = _policy_builder(str(name_or_path))
    if build is None:
        return str(name_or_path)
    if corpus is None:
        return str(_build_once(build, str(name_or_path), Path(cache_dir) / f"policy-{name_or_path}"))
    texts = default_corpus() + list(corpus)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    return str(_build_once(functools.partial(build, corpus=texts), str(name_or_path),
                           Path(cache_dir) / f"policy-{name_or_path}-{digest}"))


def resolve_reward(name_or_path: str | Path, cache_dir: str | Path) -> str:
    """A reward preset name -> its folder `cache_dir/reward-<name>`, built once; else unchanged."""
    if str(name_or_path) not in REWARD_PRESETS:
        return str(name_or_path)
    return str(_build_once(build_reward_preset, str(name_or_path), Path(cache_dir) / f"reward-{name_or_path}"))
