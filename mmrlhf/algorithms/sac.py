"""Token-level discrete soft actor-critic with a KL leash to the reference policy.

Each response token is an action ``a`` from the vocabulary in state ``s_t`` (image, prompt and
the tokens so far). Discrete SAC (Christodoulou 2019, "Soft Actor-Critic for Discrete Action
Settings") takes expectations over the whole vocabulary instead of sampling actions, with twin
Q functions and slowly moving target copies (Haarnoja et al. 2018; Fujimoto et al. 2018). The
entropy bonus ``-α log π`` is replaced by ``-α (log π - log π_ref)``, the KL-regularised soft
objective of KL-control (Jaques et al. 2017, 2019): its optimal policy is
``π ∝ π_ref exp(Q / α)``, so ``α`` is the KL leash and, with zero Q heads, the reference policy
is already optimal (no early drift). Without ``ref_logp`` the functions give plain entropy-
regularised SAC.

Shapes: ``B`` batch, ``R`` response tokens (right-padded), ``V`` vocabulary. Log-probs in
nats. Normalisation of token losses as in :mod:`mmrlhf.algorithms.ppo` (``normalizer``).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from mmrlhf.algorithms.masked import masked_mean, reduce_tokens

# Log-probs below this are clamped: their tokens have probability exp(-1e4) = 0 in float32 and
# the clamp keeps alpha * log-prob finite (the policy gives the image token log-prob ≈ -3.4e38).
LOGP_FLOOR = -1e4


def _regularised_logp(logp: Tensor, ref_logp: Optional[Tensor]) -> Tensor:
    """log π - log π_ref (or log π), per action, with both clamped at ``LOGP_FLOOR``."""
    logp = logp.clamp(min=LOGP_FLOOR)
    return logp if ref_logp is None else logp - ref_logp.clamp(min=LOGP_FLOOR)


def soft_state_values(q: Tensor, logp: Tensor, alpha: float, ref_logp: Optional[Tensor] = None) -> Tensor:
    """Soft value ``V(s) = Σ_a π(a|s) [Q(s, a) - α (log π(a|s) - log π_ref(a|s))]``.

    q, logp, ref_logp: (B, R, V); ``ref_logp=None`` drops the prior (SAC's ``-α log π``).
    Returns (B, R): the value of the state before each response token (Christodoulou 2019, eq. 10).
    """
    return (logp.exp() * (q - alpha * _regularised_logp(logp, ref_logp))).sum(-1)


def soft_q_targets(rewards: Tensor, next_values: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Soft Bellman targets ``y_t = r_t + γ m_{t+1} V(s_{t+1})``; the last real token is terminal.

    rewards: (B, R) per-token rewards (the sequence score on the last real token);
    next_values: (B, R) target soft values of the state before each token
    (:func:`soft_state_values` of the target Q heads); response_mask: (B, R).
    Returns (B, R), detached, 0 on padding.
    """
    mask = response_mask.to(rewards.dtype)
    following = torch.zeros_like(next_values)
    following[:, :-1] = next_values[:, 1:] * mask[:, 1:]
    return ((rewards + gamma * following) * mask).detach()


def sac_critic_loss(q1: Tensor, q2: Tensor, actions: Tensor, targets: Tensor, response_mask: Tensor,
                    normalizer: float | Tensor | None = None) -> Tensor:
    """Twin-Q regression ``½ (Q1(s,a) - y)² + ½ (Q2(s,a) - y)²`` at the taken tokens.

    q1, q2: (B, R, V) online Q heads (with grad); actions: (B, R) int64 sampled tokens;
    targets: (B, R) from :func:`soft_q_targets`; response_mask: (B, R).
    Returns a scalar (token mean, or masked sum / ``normalizer``).
    """
    index = actions[..., None]
    errors = (q1.gather(-1, index).squeeze(-1) - targets) ** 2 + (q2.gather(-1, index).squeeze(-1) - targets) ** 2
    return reduce_tokens(0.5 * errors, response_mask, normalizer)


def sac_actor_loss(logp: Tensor, q1: Tensor, q2: Tensor, alpha: float, response_mask: Tensor,
                   ref_logp: Optional[Tensor] = None, normalizer: float | Tensor | None = None) -> Tensor:
    """Policy loss ``Σ_a π(a|s) [α (log π(a|s) - log π_ref(a|s)) - min(Q1, Q2)(s, a)]``.

    logp: (B, R, V) current policy (with grad); q1, q2: (B, R, V), used without grad;
    ref_logp: (B, R, V) or None (entropy-regularised SAC). Minimising it over π gives
    ``π ∝ π_ref exp(min Q / α)`` (Christodoulou 2019, eq. 12, with the prior).
    Returns a scalar (token mean, or masked sum / ``normalizer``).
    """
    q = torch.minimum(q1, q2).detach()
    per_token = (logp.exp() * (alpha * _regularised_logp(logp, ref_logp) - q)).sum(-1)
    return reduce_tokens(per_token, response_mask, normalizer)


def sac_loss(logp: Tensor, q1: Tensor, q2: Tensor, target_q1: Tensor, target_q2: Tensor, actions: Tensor,
             rewards: Tensor, response_mask: Tensor, alpha: float, gamma: float = 1.0, critic_coef: float = 1.0,
             ref_logp: Optional[Tensor] = None,
             normalizer: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """One SAC loss for a shared trunk: ``actor + critic_coef * critic``.

    logp: (B, R, V) current policy; q1, q2: (B, R, V) online Q heads; target_q1, target_q2:
    (B, R, V) target Q heads; actions, rewards, response_mask: (B, R); ref_logp: (B, R, V) or
    None. The targets use the current policy's (detached) distribution at the next state and the
    smaller target Q (clipped double Q).
    Returns (loss, {"sac/actor_loss", "sac/critic_loss", "sac/q", "sac/target", "sac/kl_ref" or
    "sac/entropy"}), detached; the two losses follow ``normalizer`` like ``loss``, the others are
    this shard's token means (as in :func:`mmrlhf.algorithms.ppo.ppo_loss`).
    """
    with torch.no_grad():
        next_values = soft_state_values(torch.minimum(target_q1, target_q2), logp.detach(), alpha, ref_logp)
        targets = soft_q_targets(rewards, next_values, response_mask, gamma)
    critic = sac_critic_loss(q1, q2, actions, targets, response_mask, normalizer)
    actor = sac_actor_loss(logp, q1, q2, alpha, response_mask, ref_logp, normalizer)
    with torch.no_grad():
        probs = logp.exp()
        divergence = (probs * _regularised_logp(logp, ref_logp)).sum(-1)  # KL(π‖π_ref) or -entropy
        metrics = {
            "sac/actor_loss": actor.detach(),
            "sac/critic_loss": critic.detach(),
            "sac/q": masked_mean(q1.gather(-1, actions[..., None]).squeeze(-1), response_mask),
            "sac/target": masked_mean(targets, response_mask),
            **({"sac/kl_ref": masked_mean(divergence, response_mask)} if ref_logp is not None
               else {"sac/entropy": masked_mean(-divergence, response_mask)}),
        }
    return actor + critic_coef * critic, metrics


@torch.no_grad()
def polyak_update(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """Move each target tensor towards its online tensor, in place: ``θ' ← (1 - τ) θ' + τ θ``.

    target, online: tensors of equal shapes, paired in order (e.g. two modules' ``parameters()``).
    Raises ValueError for ``tau`` outside [0, 1] or lists of different lengths.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"polyak_update: tau={tau}, expected a number in [0, 1]")
    target, online = list(target), list(online)
    if len(target) != len(online):
        raise ValueError(f"polyak_update: {len(target)} target tensors for {len(online)} online ones")
    for t, o in zip(target, online):
        t.lerp_(o, tau)
