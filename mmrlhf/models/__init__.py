"""Models: the VLM policy (family adapters in `families/`), its value head, its soft Q heads and the CLIP reward model (no Ray, no torch.distributed)."""

from mmrlhf.models.policy import (Generation, PromptBatch, encode_prompts, encode_responses, generate,
                                  load_policy, response_distribution, response_logprobs)
from mmrlhf.models.presets import (POLICY_PRESETS, REWARD_PRESETS, build_policy_preset, build_reward_preset,
                                   resolve_policy, resolve_reward)
from mmrlhf.models.sampling import Sampling, resolve_sampling, token_logprobs
from mmrlhf.models.reward import RewardModel, build_clip, register_clip_config
from mmrlhf.models.soft_q import SoftActorCritic
from mmrlhf.models.tokenizer import train_tokenizer
from mmrlhf.models.value import ActorCritic, ValueHead

__all__ = [
    "Generation", "PromptBatch", "encode_prompts", "encode_responses", "generate", "load_policy",
    "response_distribution", "response_logprobs", "POLICY_PRESETS", "REWARD_PRESETS", "build_policy_preset", "build_reward_preset",
    "resolve_policy", "resolve_reward", "RewardModel", "build_clip", "register_clip_config", "train_tokenizer",
    "ActorCritic", "ValueHead", "SoftActorCritic", "Sampling", "resolve_sampling", "token_logprobs",
]
