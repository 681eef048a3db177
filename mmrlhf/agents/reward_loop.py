"""The reward model's side of an agent run (Christiano et al. 2017, figure 1): clips from the
EnvRunners, queries by ensemble disagreement, simulated labels, retraining on the growing pair set,
and the in-place swap of the new weights into the Serve deployment while RLlib keeps its state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

from mmrlhf.agents.config import AgentConfig
from mmrlhf.agents.env import Clip, find_wrapper, shape_reward
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


def relabel_replay_buffer(buffer: EpisodeReplayBuffer, ensemble: FrameRewardEnsemble, transform: str,
                          reward_scale: float) -> int:
    """Rewrite the reward of every transition in an RLlib replay buffer with `ensemble`
    (PEBBLE, Lee et al. 2021, section 4.2: an off-policy learner must not mix rewards of old and
    new reward models). Reward t of an episode comes from the frame in its infos[t + 1] (the
    frame after step t, put there by the wrapper's `frames_in_infos`), shaped as the wrapper
    does (`shape_reward`). Returns the number of transitions relabelled.

    Raises KeyError naming the episode when a step's infos hold no "frame".
    """
    relabelled = 0
    for episode in buffer.episodes:
        infos = episode.get_infos()[1:]  # infos[t + 1] belongs to reward t
        if any("frame" not in info for info in infos):
            raise KeyError(f"relabel_replay_buffer: episode {episode.id_} has steps without a 'frame' in "
                           "their infos (the env needs frames_in_infos=True)")
        learned = ensemble.rewards(np.stack([info["frame"] for info in infos]))  # (T,)
        episode.set_rewards(new_data=shape_reward(learned, transform, reward_scale))
        relabelled += len(learned)
    return relabelled


class RewardModelLoop:
    """Owns the ensemble, the pair set and the deployment's weights versions.

    Writes `out_dir/reward/v<k>/` (each version's weights) and `out_dir/clips/round<k>_*.png` (the
    first query of each round as two frame strips). Deploys version 0 (untrained) on creation.
    """

    def __init__(self, cfg: AgentConfig, out_dir: Path) -> None:
        self.cfg, self.prefs, self.out_dir = cfg, cfg.preferences, out_dir
        self.ensemble = FrameRewardEnsemble(self.prefs.members, cfg.env.frame_size, cfg.seed, cfg.env.frame_stack)
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
                                 seed=self.cfg.seed * 1000 + self.version, augment_shift=self.prefs.augment_shift,
                                 weight_decay=self.prefs.weight_decay)
        self.version += 1
        for side, frames in (("a", frames_1[0]), ("b", frames_2[0])):
            newest = frames if frames.ndim == 3 else frames[:, -1]  # (L, S, S): a stack's newest frame
            save_strip(newest, self.out_dir / "clips" / f"round{self.version}_{side}.png", every=5)
        self._publish()
        return {"reward/accuracy": accuracy, "pairs": len(self.pairs), "reward/version": self.version, **metrics}
