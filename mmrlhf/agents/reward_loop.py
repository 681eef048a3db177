"""The reward model's side of an agent run (Christiano et al. 2017, figure 1): clips from the
EnvRunners, queries by ensemble disagreement, simulated labels, retraining on the growing pair set,
and the in-place swap of the new weights into the Serve deployment while RLlib keeps its state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm

from mmrlhf.agents.config import AgentConfig
from mmrlhf.agents.env import Clip, find_wrapper
from mmrlhf.agents.frames import save_strip
from mmrlhf.agents.preferences import PairSet, select_queries, simulated_labels, true_order_accuracy
from mmrlhf.agents.reward_model import FrameRewardEnsemble, train_ensemble
from mmrlhf.agents.serve_reward import deploy_frame_reward


def take_clips(algo: Algorithm) -> list[Clip]:
    """Every clip the EnvRunners (local and remote) have cut since the last call."""
    per_runner = algo.env_runner_group.foreach_env_runner(lambda runner: find_wrapper(runner.env).take_clips())
    return [clip for clips in per_runner for clip in clips]


def sample_random(algo: Algorithm, env_steps: int) -> int:
    """Step every EnvRunner `env_steps` times with random actions (clips for the first queries; the
    steps go into no training batch). Returns the env steps taken by all EnvRunners together."""
    episodes = algo.env_runner_group.foreach_env_runner(
        lambda runner: runner.sample(num_timesteps=env_steps, random_actions=True))
    return sum(len(e) for runner_episodes in episodes for e in runner_episodes)


class RewardModelLoop:
    """Owns the ensemble, the pair set and the deployment's weights versions.

    Writes `out_dir/reward/v<k>/` (each version's weights) and `out_dir/clips/round<k>_*.png` (the
    first query of each round as two frame strips). Deploys version 0 (untrained) on creation.
    """

    def __init__(self, cfg: AgentConfig, out_dir: Path) -> None:
        self.cfg, self.prefs, self.out_dir = cfg, cfg.preferences, out_dir
        self.ensemble = FrameRewardEnsemble(self.prefs.members, cfg.env.frame_size, cfg.seed)
        self.pairs = PairSet()
        self.rng = np.random.default_rng(cfg.seed)
        self.version = 0
        self._publish()

    def _publish(self) -> None:
        weights = self.ensemble.save(self.out_dir / "reward" / f"v{self.version}")
        deploy_frame_reward(weights, self.version, self.cfg.reward_cpus)

    def round(self, clips: list[Clip], n_pairs: int) -> dict[str, float]:
        """One round: ask `n_pairs` queries about `clips`, retrain, swap version k+1 into Serve.

        Returns {"reward/accuracy": the ensemble's agreement with the true order on the new
        pairs before training on them, "reward/loss", "reward/train_accuracy", "pairs", "reward/version"}.
        Raises ValueError with fewer than 2 clips.
        """
        queries = select_queries(self.ensemble, clips, n_pairs, self.prefs.candidates, self.rng)  # (Q, 2)
        frames_1, frames_2 = (np.stack([clips[i][0] for i in queries[:, k]]) for k in (0, 1))
        returns_1, returns_2 = (np.array([clips[i][1].sum() for i in queries[:, k]]) for k in (0, 1))
        accuracy = true_order_accuracy(self.ensemble, frames_1, frames_2, returns_1, returns_2)
        mu = simulated_labels(returns_1, returns_2, self.prefs.label_noise, self.rng)
        self.pairs.add(clips, queries, mu)
        metrics = train_ensemble(self.ensemble, *self.pairs.arrays(), steps=self.prefs.train_steps,
                                 batch_pairs=self.prefs.batch_pairs, lr=self.prefs.lr,
                                 seed=self.cfg.seed * 1000 + self.version)
        self.version += 1
        for side, frames in (("a", frames_1[0]), ("b", frames_2[0])):
            save_strip(frames, self.out_dir / "clips" / f"round{self.version}_{side}.png", every=5)
        self._publish()
        return {"reward/accuracy": accuracy, "pairs": len(self.pairs), "reward/version": self.version, **metrics}
