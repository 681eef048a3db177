"""Pure-torch RLHF math: masked reductions, preference, KL, advantages (GAE and critic-free
estimators), PPO and SAC losses.

Nothing here imports ray, deepspeed or torch.distributed; callers reduce across ranks.
"""

from mmrlhf.algorithms.advantages import (
    gae,
    group_normalized_scores,
    group_score_range,
    group_statistics,
    token_rewards,
)
from mmrlhf.algorithms.estimators import (
    ESTIMATORS,
    dr_grpo_advantages,
    get_estimator,
    grpo_advantages,
    informative_groups,
    register_estimator,
    reinforce_pp_advantages,
    rloo_advantages,
)
from mmrlhf.algorithms.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
)
from mmrlhf.algorithms.masked import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    reduce_tokens,
)
from mmrlhf.algorithms.ppo import entropy_bonus, policy_loss, ppo_loss, truncated_importance_weights, value_loss
from mmrlhf.algorithms.preference import bradley_terry_loss, bradley_terry_prob
from mmrlhf.algorithms.sac import (
    polyak_update,
    sac_actor_loss,
    sac_critic_loss,
    sac_loss,
    soft_q_targets,
    soft_state_values,
)

__all__ = [
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "bradley_terry_prob",
    "dr_grpo_advantages",
    "entropy_bonus",
    "entropy_from_logits",
    "gae",
    "get_estimator",
    "group_normalized_scores",
    "group_score_range",
    "group_statistics",
    "grpo_advantages",
    "informative_groups",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "polyak_update",
    "policy_loss",
    "ppo_loss",
    "reduce_tokens",
    "register_estimator",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sac_actor_loss",
    "sac_critic_loss",
    "sac_loss",
    "soft_q_targets",
    "soft_state_values",
    "token_rewards",
    "truncated_importance_weights",
    "value_loss",
]
