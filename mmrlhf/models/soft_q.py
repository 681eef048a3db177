"""Soft Q model for token-level discrete SAC: twin Q heads and their target copies on the policy.

`SoftActorCritic` holds the policy, two linear Q heads over its last-layer hidden states (one Q
value per vocabulary token, as in discrete SAC, Christodoulou 2019) and frozen target copies of
the heads, in ONE `nn.Module`, so a DeepSpeed engine wraps them all and one forward returns
everything `algorithms.sac.sac_loss` needs. The target heads read the online trunk's hidden
states (detached): only the heads are slow-moving copies, which keeps one forward per step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmrlhf.models.policy import PromptBatch, response_distribution


class SoftActorCritic(nn.Module):
    """Policy (an `AutoModelForImageTextToText` VLM) + twin Q heads + target Q heads.

    policy: the model from `load_policy`. The heads map (B, R, H) hidden states to (B, R, V)
    Q values and start at zero, so with a KL leash to the starting policy that policy is
    already optimal for the first actor step (see `algorithms.sac`). `target_q_heads` have
    `requires_grad=False`; the learner moves them with `algorithms.sac.polyak_update`.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden, vocab = policy.config.text_config.hidden_size, policy.get_output_embeddings().weight.shape[0]
        self.q_heads = nn.ModuleList([nn.Linear(hidden, vocab) for _ in range(2)]).to(policy.dtype)
        for head in self.q_heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.target_q_heads = copy.deepcopy(self.q_heads).requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, torch.Tensor],
                response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0):
        """One teacher-forced forward over [prompt ; response] (see `policy.response_distribution`).

        input_ids, attention_mask: (B, T) left-padded prompts; vision: {name: (B, ...)} (`PromptBatch.vision`);
        response_ids, response_mask: (B, R) right-padded.
        Returns (logp (B, R, V) nats, q1, q2 (B, R, V) with gradients, target_q1, target_q2
        (B, R, V) without), all float32; index t is the state before response token t.
        """
        logp, hidden = response_distribution(self.policy, PromptBatch(input_ids, attention_mask, vision),
                                             response_ids, response_mask, temperature, top_p, top_k)
        q1, q2 = (head(hidden).float() for head in self.q_heads)
        with torch.no_grad():
            target_q1, target_q2 = (head(hidden.detach()).float() for head in self.target_q_heads)
        return logp, q1, q2, target_q1, target_q2
