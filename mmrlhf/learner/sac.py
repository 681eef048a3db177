"""SAC on one learner rank: scored rollouts into a replay buffer, then off-policy soft actor-critic steps.

Token-level discrete SAC with a KL leash to the reference policy (`mmrlhf.algorithms.sac`):
the sequence score lands on the last real response token, the twin Q heads and the policy share
the trunk of `models.soft_q.SoftActorCritic`, the target Q heads follow the online ones by Polyak
averaging after every step, and the KL weight ``α`` is the KL controller's value (``rl.kl_coef``).
Each rank keeps its own shards in its own `ReplayBuffer` (``rl.replay_capacity / ranks`` rows)
and draws ``rl.minibatch_size / ranks`` rows per step; the reference policy's distribution is
recomputed for each sampled minibatch rather than stored (it is ``(B, R, V)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import deepspeed
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmrlhf.algorithms import entropy_from_logits, kl_estimate, masked_mean, polyak_update, sac_loss, token_rewards
from mmrlhf.config import RLConfig
from mmrlhf.learner.ppo import mean_metrics, rollout_stats, scored_rows
from mmrlhf.learner.replay import ReplayBuffer
from mmrlhf.learner.worker import LearnerWorker, all_reduce_sum
from mmrlhf.models.policy import PromptBatch, load_policy, response_distribution, response_logprobs
from mmrlhf.models.sampling import resolve_sampling
from mmrlhf.types import VISION_PREFIX, vision_of


class SACLearner(LearnerWorker):
    """A learner rank with the frozen reference policy and a replay buffer of this rank's shards.

    Args (beyond :class:`LearnerWorker`'s): ref_policy_path: the reference (SFT) policy, loaded
    frozen; rl: the settings (``rl.algorithm == "sac"``: ``sac_tau``, ``sac_updates_per_step``,
    ``replay_capacity``, ``minibatch_size``, ``vf_coef`` as the critic loss weight, ``gamma``).
    The model (from ``model_factory``) is a `SoftActorCritic`.
    """

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int,
                 model_factory: Callable, ds_config: dict, seed: int = 0,
                 ref_policy_path: str = "", rl: RLConfig | None = None) -> None:
        torch.set_num_threads(1)
        super().__init__(rank, world_size, master_addr, master_port, model_factory, ds_config, seed)
        self.rl = rl or RLConfig()
        ref_policy, processor = load_policy(ref_policy_path)
        self.ref_policy = ref_policy.eval().requires_grad_(False)
        # the rollout workers resolve the same settings from the same checkpoint
        self.sampling = resolve_sampling(ref_policy.generation_config, self.rl.temperature, self.rl.top_p,
                                         self.rl.top_k)
        pad = processor.tokenizer.pad_token_id
        self.replay = ReplayBuffer(max(1, self.rl.replay_capacity // world_size), padding={
            "input_ids": (pad, True), "attention_mask": (0, True),
            "response_ids": (pad, False), "response_mask": (0, False), "rewards": (0.0, False)})
        self.alpha = self.rl.kl_coef

    def _forward(self, b: dict[str, Tensor]):
        return self.engine(b["input_ids"], b["attention_mask"], vision_of(b), b["response_ids"], b["response_mask"],
                           **self.sampling.kwargs())

    @torch.no_grad()
    def make_experience(self, shard: dict[str, Tensor], kl_coef: float) -> dict[str, float]:
        """Per-token rewards for this rank's shard, added to the replay buffer; ``kl_coef`` becomes α.

        ``shard``: as for `PPOLearner.make_experience` (``scores`` (B,), NaN for unscored rows,
        which are stored with an all-zero mask). Returns the same ``rollout/*`` metrics, reduced
        over ranks, plus ``replay/rows`` (rows held, all ranks).
        """
        scored, mask, scores = scored_rows(shard)
        self.engine.eval()
        logp, *_ = self._forward(shard)
        old_logprobs = logp.gather(-1, shard["response_ids"][..., None]).squeeze(-1)
        batch = PromptBatch(shard["input_ids"], shard["attention_mask"], vision_of(shard))
        ref_logprobs, _, _ = response_logprobs(self.ref_policy, batch, shard["response_ids"], mask,
                                               **self.sampling.kwargs())
        kl = kl_estimate(old_logprobs, ref_logprobs, self.rl.kl_estimator) * mask
        # ALGO: the score on the last real token; the KL leash is in the soft value, not the reward.
        rewards = token_rewards(scores, torch.zeros_like(kl), mask, 0.0)
        self.replay.add({"input_ids": shard["input_ids"], "attention_mask": shard["attention_mask"],
                         **{k: v for k, v in shard.items() if k.startswith(VISION_PREFIX)},
                         "response_ids": shard["response_ids"],
                         "response_mask": mask, "rewards": rewards})
        self.alpha = kl_coef
        (rows,) = all_reduce_sum(len(self.replay))
        return {**rollout_stats(shard, scores, scored, mask, old_logprobs, kl), "replay/rows": rows}

    def _minibatch_loss(self, model: Any, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        (n_tokens,) = all_reduce_sum(b["response_mask"].sum())
        logp, q1, q2, target_q1, target_q2 = self._forward(b)
        with torch.no_grad():
            batch = PromptBatch(b["input_ids"], b["attention_mask"], vision_of(b))
            ref_logp, _ = response_distribution(self.ref_policy, batch, b["response_ids"], b["response_mask"],
                                                **self.sampling.kwargs())
        loss, metrics = sac_loss(logp, q1, q2, target_q1, target_q2, b["response_ids"], b["rewards"],
                                 b["response_mask"], self.alpha, self.rl.gamma, self.rl.vf_coef, ref_logp,
                                 normalizer=n_tokens)
        metrics["policy/entropy"] = masked_mean(entropy_from_logits(logp.detach()), b["response_mask"])
        return loss * self.world_size, metrics  # DeepSpeed averages gradients over ranks

    def _update_target_heads(self) -> None:
        module = self.engine.module
        online, target = list(module.q_heads.parameters()), list(module.target_q_heads.parameters())
        zero3 = self.engine.zero_optimization_stage() == 3
        # ZeRO-3 partitions every parameter: gather both sets, let rank 0's result be kept.
        with deepspeed.zero.GatheredParameters(online, enabled=zero3), \
                deepspeed.zero.GatheredParameters(target, modifier_rank=0, enabled=zero3):
            polyak_update(target, online, self.rl.sac_tau)

    def update(self) -> dict[str, float]:
        """``rl.sac_updates_per_step`` steps on minibatches drawn from the replay buffer (whole
        prompts: blocks of ``rl.samples_per_prompt`` rows), each followed by a Polyak update of the
        target Q heads; metrics averaged over the steps.

        Raises RuntimeError when the buffer is empty (call ``make_experience`` first).
        """
        if not len(self.replay):
            raise RuntimeError("SACLearner.update: the replay buffer is empty; call make_experience first")
        self.engine.eval()  # as in PPO: the learner's log-probs are those the rollout workers sample with
        per_rank = max(1, self.rl.minibatch_size // self.world_size)
        history = []
        for _ in range(self.rl.sac_updates_per_step):
            minibatch = self.replay.sample(per_rank, self.generator, block=self.rl.samples_per_prompt)
            history.append(self.train_step(minibatch, self._minibatch_loss))
            self._update_target_heads()
        return mean_metrics(history)

    def save_checkpoint(self, folder: str) -> str | None:
        """:meth:`LearnerWorker.save_checkpoint` plus this rank's replay buffer and α
        (``replay_rank<r>.safetensors``, ``sac_rank<r>.json``)."""
        digest = super().save_checkpoint(folder)
        save_file(self.replay.state_dict(), str(Path(folder) / f"replay_rank{self.rank}.safetensors"))
        (Path(folder) / f"sac_rank{self.rank}.json").write_text(json.dumps({"alpha": self.alpha}))
        return digest

    def load_checkpoint(self, folder: str) -> str | None:
        """Load what :meth:`save_checkpoint` wrote. Raises FileNotFoundError for a missing part."""
        digest = super().load_checkpoint(folder)
        replay = Path(folder) / f"replay_rank{self.rank}.safetensors"
        if not replay.is_file():
            raise FileNotFoundError(f"{folder}: no {replay.name}; not a SAC checkpoint?")
        self.replay.load_state_dict(load_file(str(replay)))
        self.alpha = json.loads((Path(folder) / f"sac_rank{self.rank}.json").read_text())["alpha"]
        return digest
