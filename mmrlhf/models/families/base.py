"""What every VLM family adapter does, and the registry that finds a model's adapter.

A family adapter (transformers keeps what differs per model family in that family's own files;
here, one small subclass of :class:`Family` per file) owns the parts of the policy code that
differ between VLM families:

- the prompt, built with the processor's own chat template (one image, then the prompt, then the
  generation prompt);
- the processor outputs for the images (``pixel_values``, ``image_grid_thw``, ``pixel_attention_mask``,
  ``image_sizes``, ...) as a dict of tensors whose every value is row-batched ``(B, ...)``: it
  travels unchanged through rollouts, the Ray object store, replay buffers and the learner, which
  shard, select and join rows along dim 0 and pad any other dim at its end with zeros
  (:func:`mmrlhf.types.cat_rows`); :meth:`Family.model_inputs` turns it back into the model's
  keyword arguments;
- position ids, 1-D over real tokens here, the family's way in subclasses (Qwen's mrope);
- the trunk call (cached generation and teacher-forced scoring both go through :meth:`Family.trunk`)
  and the logits of a hidden state.

The base class is LLaVA-shaped (LLaVA 1.5, FastVLM presets). Nothing outside ``models/`` names
a family: :func:`family_for` finds the adapter by the model's ``config.model_type``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

_REGISTRY: dict[str, type["Family"]] = {}
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # per-token, not per-row


def register_family(*model_types: str) -> Callable[[type["Family"]], type["Family"]]:
    """Class decorator: the adapter for models whose ``config.model_type`` is one of ``model_types``."""

    def register(cls: type["Family"]) -> type["Family"]:
        for model_type in model_types:
            _REGISTRY[model_type] = cls
        return cls

    return register


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values that have an adapter, sorted."""
    return sorted(_REGISTRY)


def video_model_types() -> list[str]:
    """The ``config.model_type`` values whose adapter has a video path (``Family.takes_video``), sorted."""
    return sorted(name for name, cls in _REGISTRY.items() if cls.takes_video)


def family_for(model: Any) -> "Family":
    """The adapter of ``model`` (a transformers model, or its config).

    Raises ValueError (one line) naming the model class and the supported families.
    """
    config = getattr(model, "config", model)
    cls = _REGISTRY.get(getattr(config, "model_type", None))
    if cls is None:
        raise ValueError(f"policy class {type(model).__name__} (model_type {getattr(config, 'model_type', None)!r}) "
                         f"has no family adapter; supported model types: {', '.join(supported_model_types())}")
    return cls(config)


def adds_special_tokens(processor: Any, text: str) -> bool:
    """Whether tokenizing the chat-templated ``text`` should add the tokenizer's special tokens:
    not when the template wrote the bos token itself (Gemma, the presets), else yes (LLaVA-1.5's
    template leaves bos to the tokenizer; Qwen's tokenizer adds none)."""
    bos = processor.tokenizer.bos_token
    return not (bos and text.startswith(bos))


class Family:
    """The LLaVA-shaped adapter; subclasses override what their family does differently.

    config: the model's transformers config.
    """

    default_chat_template: str | None = None  # used when the processor brings none
    nested_images = False  # whether the processor takes the images as one list per text
    takes_video = False  # whether the processor and model take clips (``videos=``)

    def __init__(self, config: Any) -> None:
        self.config = config

    # -- prompt and processor outputs --------------------------------------------------------------

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        """Placeholder token ids that stand for image/video features (never sampled)."""
        ids = (getattr(self.config, name, None) for name in ("image_token_id", "video_token_id"))
        return tuple(sorted({i for i in ids if i is not None}))

    def chat_prompt(self, processor: Any, prompt: str, video: bool = False) -> str:
        """One user turn (an image, or a video when ``video``, then ``prompt``) through the
        processor's chat template, with the generation prompt; the template writes the
        placeholder the processor expands.

        Raises ValueError when neither the processor nor the family has a chat template.
        """
        template = getattr(processor, "chat_template", None) or self.default_chat_template
        if template is None:
            raise ValueError(f"{type(processor).__name__} has no chat_template (save one with the checkpoint)")
        visual = {"type": "video" if video else "image"}
        conversation = [{"role": "user", "content": [visual, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, chat_template=template, add_generation_prompt=True,
                                             tokenize=False)

    def processor_images(self, images: list[Any]) -> list[Any]:
        """``images`` (one RGB uint8 array per prompt) as the processor's ``images=`` wants them:
        flat, or one list per text (``nested_images``)."""
        return [[image] for image in images] if self.nested_images else images

    def encode(self, processor: Any, images: list[Any], texts: list[str], video: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Processor call on chat-templated ``texts`` -> (input_ids (B, T), attention_mask (B, T),
        vision {name: (B, ...)}), left-padded (see :func:`adds_special_tokens` for the bos token).
        ``video``: ``images`` are clips (F, H, W, 3), given as ``videos=`` (families that take video).
        """
        visuals = {"videos": list(images)} if video else {"images": self.processor_images(images)}
        enc = processor(text=texts, return_tensors="pt", padding=True,
                        add_special_tokens=adds_special_tokens(processor, texts[0]), **visuals)
        return enc["input_ids"], enc["attention_mask"], self.to_rows(enc)

    def to_rows(self, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The processor's image outputs as row-batched tensors (here: already ``(B, ...)``)."""
        return {k: v for k, v in enc.items() if k not in TOKEN_KEYS and isinstance(v, torch.Tensor)}

    def model_inputs(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Row-batched ``vision`` -> the trunk's image keyword arguments (the inverse of :meth:`to_rows`)."""
        return dict(vision)

    # -- positions, trunk, logits ------------------------------------------------------------------

    def positions(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  vision: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(position ids of ``input_ids`` (B, T), the position of the next token (B, 1)).

        Counted over real tokens only, so a row's continuation does not depend on how much
        left padding its batch needed; padding gets 0.
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, positions.max(-1, keepdim=True).values + 1

    def token_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-token keyword arguments a forward over the images needs besides ids and mask (none
        here), computed from ``input_ids`` (B, L) as the processor would write them."""
        return {}

    def trunk(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              position_ids: torch.Tensor, vision: dict[str, torch.Tensor] | None = None, cache: Any = None,
              use_cache: bool = False):
        """One forward of the model's trunk (``model.model``); ``vision`` None on cached steps.

        Returns transformers' output (``last_hidden_state`` (B, L, H) after the final norm, ``cache``).
        """
        images = {**self.model_inputs(vision), **self.token_inputs(input_ids)} if vision is not None else {}
        return model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           cache=cache, use_cache=use_cache, **images)

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) final-norm hidden -> (..., V) logits, as the model's own forward computes them."""
        return model.get_output_embeddings()(hidden)

    # -- parts -------------------------------------------------------------------------------------

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The image encoder (frozen by ``rl.freeze_vision_tower``)."""
        return model.model.vision_tower

    def vision_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The vision tower's and the projector's parameters (SFT's vision warm-up trains them)."""
        projector = getattr(model.model, "multi_modal_projector", None)
        return [*self.vision_tower(model).parameters(), *(projector.parameters() if projector is not None else ())]

    def pooled_image_features(self, model: nn.Module, vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H): the mean of each row's image tokens as the language model sees them
        (the model's own ``get_image_features``: vision tower + projector)."""
        return pool_rows(model.model.get_image_features(**self.model_inputs(vision)))


def pool_rows(features: Any) -> torch.Tensor:
    """A ``get_image_features``/``get_video_features`` output (its ``pooler_output`` when it has
    one: a (B, N, H) tensor, or one (N_i, H) tensor a row) -> (B, H), the mean over each row's tokens."""
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        return torch.stack([f.reshape(-1, f.shape[-1]).mean(0) for f in features])
    return features.reshape(features.shape[0], -1, features.shape[-1]).mean(1)
