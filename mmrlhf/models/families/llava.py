"""LLaVA family: LLaVA-1.5 (Liu et al. 2023), FastVLM (the tiny/small presets), LLaVA-NeXT and
LLaVA-OneVision (any-resolution tiles).

All take ``pixel_values`` batch-first from their processor: ``(B, 3, H, W)`` for LLaVA-1.5 and
FastVLM, ``(B, N, 3, H, W)`` tiles plus ``image_sizes`` ``(B, 2)`` for NeXT/OneVision, whose
processor pads N with zero tiles that the model drops by ``image_sizes``; 1-D positions. So the
base adapter is the whole of it; the presets' chat template lives here.
"""

from __future__ import annotations

from mmrlhf.models.families.base import Family, register_family

# The presets' prompt: "<s><image>\n{prompt}\n", then the response. The image placeholder comes
# first, as in LLaVA-1.5; no role words (the presets' word-level tokenizer would not know them).
PRESET_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}\n{% endif %}"
    "{% endfor %}{% endfor %}"
)


@register_family("llava", "llava_next", "llava_onevision")
class Llava(Family):
    """LLaVA-1.5 / NeXT / OneVision: the base adapter (LLaVA-shaped)."""


@register_family("fast_vlm")
class FastVlm(Family):
    """FastVLM (Vasu et al. 2025), the presets' class; preset folders saved before templates
    were saved with them use :data:`PRESET_CHAT_TEMPLATE`."""

    default_chat_template = PRESET_CHAT_TEMPLATE
