"""VLM family adapters, one file each, registered by ``config.model_type`` (see ``base``).

Importing this package registers every adapter; :func:`family_for` finds a model's.
"""

from mmrlhf.models.families import gemma3, idefics3, llava, qwen_vl  # noqa: F401  (registration)
from mmrlhf.models.families.base import (Family, family_for, register_family, supported_model_types,
                                          video_model_types)

__all__ = ["Family", "family_for", "register_family", "supported_model_types", "video_model_types"]
