"""Value model: a linear head on the policy's last-layer hidden states, and the actor-critic module.

`ActorCritic` holds the policy and the value head in ONE `nn.Module`, so a DeepSpeed engine can
wrap both and one forward returns everything PPO needs (Schulman et al. 2017; the shared-trunk
critic of Ziegler et al. 2019 / Stiennon et al. 2020).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoModelForImageTextToText

from mmrlhf.models.policy import PromptBatch, response_logprobs

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """(B, R, H) hidden states -> (B, R) float32 values. Starts at zero so early values do not
    push the trunk around before the head has learnt anything."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, R, H) -> values (B, R), float32."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()


class Actor(nn.Module):
    """The policy alone, with `ActorCritic`'s forward signature: for critic-free PPO (GRPO, RLOO,
    ...), which needs no value model. ``values`` comes back as None."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, torch.Tensor],
                response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0):
        """(logprobs (B, R) nats, entropy (B, R) nats, None), as `ActorCritic.forward` without values."""
        batch = PromptBatch(input_ids, attention_mask, vision)
        logprobs, entropy, _ = response_logprobs(self.policy, batch, response_ids, response_mask, temperature,
                                                 top_p=top_p, top_k=top_k)
        return logprobs, entropy, None


class ActorCritic(nn.Module):
    """Policy (an `AutoModelForImageTextToText` VLM) + `ValueHead` on its final hidden states.

    policy: the model from `load_policy`; value_head: a trained head, or None for a fresh one.
    """

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head or ValueHead(policy.config.text_config.hidden_size).to(policy.dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, torch.Tensor],
                response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0):
        """One teacher-forced forward over [prompt ; response] (see `policy.response_logprobs`).

        input_ids, attention_mask: (B, T) left-padded prompts; vision: {name: (B, ...)} (`PromptBatch.vision`);
        response_ids, response_mask: (B, R) right-padded.
        Returns (logprobs (B, R) nats, entropy (B, R) nats, values (B, R)) as float32 with
        gradients; values[:, t] estimates the return from the state before response token t.
        """
        batch = PromptBatch(input_ids, attention_mask, vision)
        logprobs, entropy, hidden = response_logprobs(self.policy, batch, response_ids, response_mask,
                                                      temperature, True, top_p, top_k)
        return logprobs, entropy, self.value_head(hidden)

    def save_pretrained(self, out_dir: str | Path, processor=None) -> Path:
        """Save the policy with HF `save_pretrained` (and `processor` if given, so `load_policy`
        reads the folder) and the head to `value_head.safetensors`."""
        out_dir = Path(out_dir)
        self.policy.save_pretrained(out_dir)
        if processor is not None:
            processor.save_pretrained(out_dir)
        save_model(self.value_head, str(out_dir / VALUE_HEAD_FILE))
        return out_dir

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32) -> "ActorCritic":
        """Load a folder written by `save_pretrained` (safetensors only).

        Raises FileNotFoundError if the value head is missing; for a policy-only folder use
        `ActorCritic(load_policy(dir)[0])`, which starts a fresh head.
        """
        head_path = Path(model_dir) / VALUE_HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"value head not found: {head_path}")
        policy = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        head = ValueHead(policy.config.text_config.hidden_size).to(dtype)
        load_model(head, str(head_path), strict=True)
        return cls(policy, head)
