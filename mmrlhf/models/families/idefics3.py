"""Idefics3 family: Idefics3 (Laurençon et al. 2024) and SmolVLM (Marafioti et al. 2025), whose
first release is the Idefics3 architecture and whose second has its own class.

The processor splits an image into crops (plus a global view), takes the images of each text
as a nested list, and returns ``pixel_values`` ``(B, N, 3, H, W)`` and ``pixel_attention_mask``
``(B, N, H, W)`` batch-first, with rows of fewer crops padded by all-zero images, which the
model drops; so they travel as they are. The tower is ``model.model.vision_model``, the
projector ``model.model.connector`` (pixel shuffle + linear); positions are 1-D.
"""

from __future__ import annotations

from torch import nn

from mmrlhf.models.families.base import Family, register_family


@register_family("idefics3", "smolvlm")
class Idefics3(Family):
    """Idefics3 / SmolVLM: images as one list per text, ``vision_model`` + ``connector``."""

    nested_images = True

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """``model.model.vision_model``."""
        return model.model.vision_model

    def vision_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The vision transformer's and the connector's parameters."""
        return [*self.vision_tower(model).parameters(), *model.model.connector.parameters()]
