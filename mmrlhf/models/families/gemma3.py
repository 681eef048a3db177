"""Gemma 3 family (Gemma Team 2025): a SigLIP tower, an average-pooling projector and the Gemma 3 LM.

The processor expands the template's ``<start_of_image>`` into begin/end markers around
``mm_tokens_per_image`` soft tokens and returns fixed-size ``pixel_values`` ``(B, 3, H, W)``
(pan-and-scan off). The LM attends bidirectionally among one image's soft tokens, which it
learns from ``token_type_ids`` (1 on them): every forward over the images passes them, as the
processor writes them; cached steps pass none (the new token is text). Positions are 1-D.
"""

from __future__ import annotations

import torch

from mmrlhf.models.families.base import Family, register_family


@register_family("gemma3")
class Gemma3(Family):
    """Gemma 3: images as one list per text; ``token_type_ids`` mark the image's soft tokens."""

    nested_images = True

    def token_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``token_type_ids`` (B, L): 1 on image soft tokens, 0 elsewhere."""
        return {"token_type_ids": (input_ids == self.config.image_token_id).long()}
