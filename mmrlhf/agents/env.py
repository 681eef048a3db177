"""The learned-reward vector environment used inside RLlib EnvRunners (new API stack).

RLlib's `SingleAgentEnvRunner` builds its envs with `gym.make_vec`; registered with
`vectorization_mode="vector_entry_point"`, it gets `LearnedRewardVectorEnv`: a gymnasium
`VectorWrapper` over a `SyncVectorEnv` of `render_mode="rgb_array"` envs. Each vector step it
renders every sub-env, downsamples the frames (`frames.downsample`), scores them with one call
of the Serve deployment (`RewardClient`: one batch per EnvRunner step) and returns that reward in
place of the env's. The policy still acts on the state vector; pixels reach only the reward model.

Infos (gymnasium's vector dict format, turned into per-env dicts by RLlib's `DictInfoToList`):
"true_reward" (the env's own reward), "reward_version" (the weights that scored the step), and on
the last step of an episode "true_episode_return". The wrapper also cuts clips of
`clip_frames` consecutive frames, with their true rewards, for preference queries
(Christiano et al. 2017): an episode that terminates inside a clip pads it with its last frame at
true reward 0 (the absorbing state); one truncated inside a clip drops it.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import SyncVectorEnv, VectorWrapper

from mmrlhf.agents.frames import downsample
from mmrlhf.agents.reward_client import RewardClient

os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame renders off-screen; no sound card needed
ENV_NAME = "mmrlhf-learned-reward"
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda r: r,
    # Episodes that end on failure (CartPole): a reward that can go negative would teach the
    # agent to end them early; sigmoid keeps every step's reward in (0, 1), ordered as r-hat.
    "sigmoid": lambda r: 1.0 / (1.0 + np.exp(-r)),
}

Clip = tuple[np.ndarray, np.ndarray]  # (frames uint8 (L, S, S), true rewards float32 (L,))


class LearnedRewardVectorEnv(VectorWrapper):
    """Replaces a vector env's reward with the served frame reward model's.

    env: a `SyncVectorEnv` of sub-envs made with render_mode="rgb_array".
    score: frames uint8 (B, S, S) -> (rewards (B,), versions (B,)), e.g. a `RewardClient`;
    None keeps the env's reward (the true-reward baseline) and renders nothing.
    frame_size: S; transform: a key of TRANSFORMS, applied before multiplying by reward_scale; clip_frames: L; max_clips: clips kept until
    `take_clips` (oldest dropped first).
    """

    def __init__(self, env: SyncVectorEnv, score: Callable | None, frame_size: int = 64,
                 transform: str = "identity", reward_scale: float = 1.0, clip_frames: int = 50,
                 max_clips: int = 400) -> None:
        super().__init__(env)
        if transform not in TRANSFORMS:
            raise ValueError(f"LearnedRewardVectorEnv: transform {transform!r}, expected one of {list(TRANSFORMS)}")
        self.score, self.frame_size, self.transform = score, frame_size, TRANSFORMS[transform]
        self.reward_scale = reward_scale
        self.clip_frames = clip_frames
        self.clips: deque[Clip] = deque(maxlen=max_clips)
        self.versions_seen: list[int] = []  # the weights version of every scored vector step, in order
        self._segments: list[list[tuple[np.ndarray, float]]] = [[] for _ in range(self.num_envs)]
        self._returns = np.zeros(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: Any = None, options: Any = None):
        """Reset every sub-env and forget the clips being cut."""
        self._segments = [[] for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._autoreset[:] = False
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        """Step every sub-env; the reward is the reward model's of the frame after the step."""
        obs, true_rewards, terminated, truncated, infos = self.env.step(actions)
        rewards = np.asarray(true_rewards, dtype=np.float32)
        frames = None
        if self.score is not None:
            frames = np.stack([downsample(f, self.frame_size) for f in self.env.render()])  # (B, S, S)
            learned, versions = self.score(frames)
            rewards = self.reward_scale * self.transform(np.asarray(learned, dtype=np.float32))
            self.versions_seen.append(int(np.min(versions)))
            infos = self._add_info(infos, "reward_version", np.asarray(versions), np.ones(self.num_envs, bool))
        self._returns = np.where(self._autoreset, 0.0, self._returns + true_rewards)
        done = terminated | truncated
        infos = self._add_info(infos, "true_reward", np.asarray(true_rewards, np.float64), np.ones(self.num_envs, bool))
        infos = self._add_info(infos, "true_episode_return", self._returns.copy(), done & ~self._autoreset)
        if frames is not None:
            self._cut_clips(frames, true_rewards, terminated, truncated)
        self._autoreset = done
        return obs, rewards, terminated, truncated, infos

    def _cut_clips(self, frames, true_rewards, terminated, truncated) -> None:
        for i in range(self.num_envs):
            if self._autoreset[i]:  # this step was the sub-env's reset (next-step autoreset)
                self._segments[i] = []
                continue
            segment = self._segments[i]
            segment.append((frames[i], float(true_rewards[i])))
            if terminated[i]:
                segment += [(frames[i], 0.0)] * max(0, self.clip_frames - len(segment))
            if truncated[i] and not terminated[i]:
                self._segments[i] = []
            elif len(segment) >= self.clip_frames:
                self.clips.append((np.stack([f for f, _ in segment[:self.clip_frames]]),
                                   np.array([r for _, r in segment[:self.clip_frames]], dtype=np.float32)))
                self._segments[i] = []

    @staticmethod
    def _add_info(infos: dict, key: str, values: np.ndarray, mask: np.ndarray) -> dict:
        return {**infos, key: values, f"_{key}": mask}

    def take_clips(self) -> list[Clip]:
        """The clips cut since the last call, oldest first; the wrapper forgets them."""
        clips = list(self.clips)
        self.clips.clear()
        return clips


def make_env(config: dict) -> LearnedRewardVectorEnv:
    """RLlib env creator (register under ENV_NAME; EnvRunners pass `config` = env_config + num_envs).

    config: "env_id" (gymnasium id), "num_envs", "learned" (bool: the reward model, else the env's
    reward), "frame_size", "transform", "reward_scale", "clip_frames", "max_clips", "attempts", "timeout_s".
    """
    env_id, num_envs = config["env_id"], int(config.get("num_envs", 1))
    vector = SyncVectorEnv([lambda: gym.make(env_id, render_mode="rgb_array") for _ in range(num_envs)])
    score = RewardClient(config.get("attempts", 3), config.get("timeout_s", 30.0)) if config.get("learned") else None
    return LearnedRewardVectorEnv(vector, score, config.get("frame_size", 64), config.get("transform", "identity"),
                                  config.get("reward_scale", 1.0), config.get("clip_frames", 50),
                                  config.get("max_clips", 400))


def find_wrapper(env: gym.Env | gym.vector.VectorEnv) -> LearnedRewardVectorEnv:
    """The `LearnedRewardVectorEnv` inside an EnvRunner's `env` (RLlib wraps it in `DictInfoToList`).

    Raises LookupError when there is none.
    """
    while not isinstance(env, LearnedRewardVectorEnv):
        if not hasattr(env, "env"):
            raise LookupError(f"find_wrapper: no LearnedRewardVectorEnv inside {env!r}")
        env = env.env
    return env
