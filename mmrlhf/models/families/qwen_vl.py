"""Qwen-VL family: Qwen2-VL (Wang et al. 2024), Qwen2.5-VL and Qwen3-VL.

Their processors return the patches of all images of a batch packed into one
``pixel_values`` ``(sum_i P_i, D)`` with ``image_grid_thw`` ``(n_images, 3)`` giving each
image's (t, h, w) patch grid; images of different sizes give different P_i. Here each row
holds one image, so the rows are ``pixel_values`` ``(B, P_max, D)`` zero-padded after each
image's ``P_i = t * h * w`` patches and ``image_grid_thw`` ``(B, 3)``, and :meth:`model_inputs`
packs them back. Positions are multimodal RoPE (mrope): 3-D (temporal, height, width) ids from
the model's own ``get_rope_index`` over the real tokens, fed ``mm_token_type_ids`` (1 on image
placeholders, 2 on video ones, as the processor writes them); text after the image continues
at the largest id + 1, so a cached step's position is the row's largest id + 1, given as (B, 1)
(the text model repeats it over the three axes).
"""

from __future__ import annotations

import torch
from torch import nn

from mmrlhf.models.families.base import Family, register_family


@register_family("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
class QwenVL(Family):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: packed patches, mrope positions, ``model.visual`` tower."""

    def to_rows(self, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Packed ``pixel_values`` (sum P_i, D) + ``image_grid_thw`` (B, 3) -> ``(B, P_max, D)`` + ``(B, 3)``."""
        grid = enc["image_grid_thw"]
        counts = grid.prod(-1).tolist()
        patches = torch.split(enc["pixel_values"], counts)
        rows = enc["pixel_values"].new_zeros(len(counts), max(counts), enc["pixel_values"].shape[-1])
        for i, p in enumerate(patches):
            rows[i, : len(p)] = p
        return {"pixel_values": rows, "image_grid_thw": grid}

    def model_inputs(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows -> packed ``pixel_values`` (sum P_i, D) and ``image_grid_thw`` (B, 3)."""
        grid = vision["image_grid_thw"]
        counts = grid.prod(-1).tolist()
        packed = torch.cat([row[:n] for row, n in zip(vision["pixel_values"], counts)])
        return {"pixel_values": packed, "image_grid_thw": grid}

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int: 1 on image placeholders, 2 on video ones, 0 on text (as the processor writes)."""
        types = (input_ids == self.config.image_token_id).int()
        return types + 2 * (input_ids == self.config.video_token_id).int()

    def positions(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  vision: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mrope ids (3, B, T) from ``model.model.get_rope_index``, next position (B, 1))."""
        positions, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=self.mm_token_type_ids(input_ids),
                                                  image_grid_thw=vision["image_grid_thw"],
                                                  attention_mask=attention_mask)
        return positions, positions.amax(dim=(0, 2))[:, None] + 1

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """``model.model.visual`` (its patch merger is the projector)."""
        return model.model.visual

    def vision_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The vision transformer's parameters, merger included."""
        return list(self.vision_tower(model).parameters())
