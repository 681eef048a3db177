"""Qwen-VL family: Qwen2-VL (Wang et al. 2024), Qwen2.5-VL and Qwen3-VL.

Their processors return the patches of all images of a batch packed into one ``pixel_values``
``(sum_i P_i, D)`` with ``image_grid_thw`` ``(n_images, 3)`` giving each image's (t, h, w) patch
grid; images of different sizes give different P_i. Here each row holds one image, so the rows are
``pixel_values`` ``(B, P_max, D)`` zero-padded after each image's ``P_i = t * h * w`` patches and
``image_grid_thw`` ``(B, 3)``, and :meth:`model_inputs` packs them back. Videos (``videos=``, one
(F, H, W, 3) clip a row; pairs of frames make one temporal patch, t = ceil(F / 2)) travel the same
way as ``pixel_values_videos`` ``(B, P_max, D)`` and ``video_grid_thw`` ``(B, 3)``, with
Qwen2.5-VL's ``second_per_grid_ts`` ``(B,)`` (seconds per temporal patch, for its time-aligned
mrope); a batch holds images or videos, not both. Positions are multimodal RoPE (mrope): 3-D
(temporal, height, width) ids from the model's own ``get_rope_index`` over the real tokens, fed
``mm_token_type_ids`` (1 on image placeholders, 2 on video ones, as the processor writes them);
text after the image continues at the largest id + 1, so a cached step's position is the row's
largest id + 1, given as (B, 1) (the text model repeats it over the three axes).
"""

from __future__ import annotations

import torch
from torch import nn

from mmrlhf.models.families.base import Family, pool_rows, register_family

_GRID_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")  # what get_rope_index reads
_PATCH_KEYS = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))  # packed, grid


@register_family("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
class QwenVL(Family):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: packed patches, mrope positions, ``model.visual`` tower, videos."""

    takes_video = True

    def to_rows(self, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Packed patches (sum P_i, D) + their grid (B, 3) -> ``(B, P_max, D)`` + ``(B, 3)``, for the
        images (``pixel_values``, ``image_grid_thw``) or the videos (``pixel_values_videos``,
        ``video_grid_thw``, and ``second_per_grid_ts`` (B,) where the processor gives it)."""
        rows = {}
        for pixels, grid in _PATCH_KEYS:
            if grid not in enc:
                continue
            counts = enc[grid].prod(-1).tolist()
            padded = enc[pixels].new_zeros(len(counts), max(counts), enc[pixels].shape[-1])
            for i, p in enumerate(torch.split(enc[pixels], counts)):
                padded[i, : len(p)] = p
            rows |= {pixels: padded, grid: enc[grid]}
        if "second_per_grid_ts" in enc:
            rows["second_per_grid_ts"] = torch.as_tensor(enc["second_per_grid_ts"], dtype=torch.float32)
        return rows

    def model_inputs(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows -> packed patches (sum P_i, D) and their grid (B, 3) (the inverse of :meth:`to_rows`)."""
        inputs = dict(vision)
        for pixels, grid in _PATCH_KEYS:
            if grid in vision:
                counts = vision[grid].prod(-1).tolist()
                inputs[pixels] = torch.cat([row[:n] for row, n in zip(vision[pixels], counts)])
        return inputs

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int: 1 on image placeholders, 2 on video ones, 0 on text (as the processor writes)."""
        types = (input_ids == self.config.image_token_id).int()
        return types + 2 * (input_ids == self.config.video_token_id).int()

    def positions(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  vision: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mrope ids (3, B, T) from ``model.model.get_rope_index``, next position (B, 1))."""
        grids = {key: vision[key] for key in _GRID_KEYS if key in vision}
        positions, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=self.mm_token_type_ids(input_ids),
                                                  attention_mask=attention_mask, **grids)
        return positions, positions.amax(dim=(0, 2))[:, None] + 1

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """``model.model.visual`` (its patch merger is the projector)."""
        return model.model.visual

    def vision_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The vision transformer's parameters, merger included."""
        return list(self.vision_tower(model).parameters())

    def pooled_image_features(self, model: nn.Module, vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H): the mean of each row's image or video tokens (``get_image_features`` /
        ``get_video_features``: tower + merger)."""
        if "video_grid_thw" not in vision:
            return super().pooled_image_features(model, vision)
        inputs = self.model_inputs(vision)
        return pool_rows(model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]))
