"""The learned-reward vector environment used inside RLlib EnvRunners (new API stack).

RLlib's `SingleAgentEnvRunner` builds its envs with `gym.make_vec`; registered with
`vectorization_mode="vector_entry_point"`, it gets `LearnedRewardVectorEnv`: a gymnasium
`VectorWrapper` over a `SyncVectorEnv` of `render_mode="rgb_array"` envs. Each vector step it
renders every sub-env, downsamples the frames (`frames.downsample`), stacks each sub-env's last
`frame_stack` frames when that is above 1 (an episode's first step repeats its frame), scores them
with one call of the Serve deployment (`RewardClient`: one batch per EnvRunner step) and returns that reward in
place of the env's. The policy still acts on the state vector; pixels reach only the reward model.

Infos (gymnasium's vector dict format, turned into per-env dicts by RLlib's `DictInfoToList`):
"true_reward" (the env's own reward), "reward_version" (the weights that scored the step), on
the last step of an episode "true_episode_return", and with `frames_in_infos` "frame" (the scored
input, so an off-policy learner can relabel its replay buffer when the reward model changes).
The wrapper also cuts clips of `clip_frames` consecutive inputs, with their true rewards, for preference queries
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

from mmrlhf.agents.config import ACTION_OVERLAYS
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

Clip = tuple[np.ndarray, np.ndarray]  # (frames uint8 (L, S, S) or stacks (L, C, S, S), true rewards float32 (L,))


def check_transform(transform: str, caller: str) -> None:
    """Raises ValueError naming `caller` when `transform` is not a key of TRANSFORMS."""
    if transform not in TRANSFORMS:
        raise ValueError(f"{caller}: transform {transform!r}, expected one of {list(TRANSFORMS)}")


def shape_reward(learned: np.ndarray, transform: str, reward_scale: float) -> np.ndarray:
    """The reward the agent sees: `reward_scale * TRANSFORMS[transform](learned)`, float32 of
    learned's shape. Raises ValueError for an unknown transform."""
    check_transform(transform, "shape_reward")
    return (reward_scale * TRANSFORMS[transform](np.asarray(learned, dtype=np.float32))).astype(np.float32)


class LearnedRewardVectorEnv(VectorWrapper):
    """Replaces a vector env's reward with the served frame reward model's.

    env: a `SyncVectorEnv` of sub-envs made with render_mode="rgb_array".
    score: frames uint8 (B, S, S) -> (rewards (B,), versions (B,)), e.g. a `RewardClient`;
    None keeps the env's reward (the true-reward baseline) and renders nothing.
    frame_size: S; frame_stack: C, the frames per reward-model input; transform, reward_scale: see
    `shape_reward`; clip_frames: L; max_clips: clips kept until `take_clips` (oldest dropped
    first); frames_in_infos: put each scored input in the infos; hide_action: the attribute of
    `ACTION_OVERLAYS` cleared on every sub-env before rendering, so the frames show the state only.
    Raises ValueError for an unknown transform.
    """

    def __init__(self, env: SyncVectorEnv, score: Callable | None, frame_size: int = 64,
                 transform: str = "identity", reward_scale: float = 1.0, clip_frames: int = 50,
                 max_clips: int = 400, frames_in_infos: bool = False, frame_stack: int = 1,
                 hide_action: str | None = None) -> None:
        super().__init__(env)
        check_transform(transform, "LearnedRewardVectorEnv")
        self.score, self.frame_size, self.transform = score, frame_size, transform
        self.reward_scale, self.frames_in_infos = reward_scale, frames_in_infos
        self.frame_stack, self.hide_action = frame_stack, hide_action
        self._history: list[deque[np.ndarray]] = [deque(maxlen=frame_stack) for _ in range(self.num_envs)]
        self.clip_frames = clip_frames
        self.clips: deque[Clip] = deque(maxlen=max_clips)
        self.versions_seen: list[int] = []  # the weights version of every scored vector step, in order
        self._segments: list[list[tuple[np.ndarray, float]]] = [[] for _ in range(self.num_envs)]
        self._returns = np.zeros(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: Any = None, options: Any = None):
        """Reset every sub-env and forget the clips being cut."""
        self._segments = [[] for _ in range(self.num_envs)]
        self._history = [deque(maxlen=self.frame_stack) for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._autoreset[:] = False
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        """Step every sub-env; the reward is the reward model's of the frame after the step."""
        obs, true_rewards, terminated, truncated, infos = self.env.step(actions)
        rewards = np.asarray(true_rewards, dtype=np.float32)
        frames = None
        if self.score is not None:
            frames = self._inputs([downsample(f, self.frame_size) for f in self._render()])  # (B, [C,] S, S)
            learned, versions = self.score(frames)
            rewards = shape_reward(learned, self.transform, self.reward_scale)
            self.versions_seen.append(int(np.min(versions)))
            infos = self._add_info(infos, "reward_version", np.asarray(versions), np.ones(self.num_envs, bool))
            if self.frames_in_infos:
                infos = self._add_info(infos, "frame", frames, np.ones(self.num_envs, bool))
        self._returns = np.where(self._autoreset, 0.0, self._returns + true_rewards)
        done = terminated | truncated
        infos = self._add_info(infos, "true_reward", np.asarray(true_rewards, np.float64), np.ones(self.num_envs, bool))
        infos = self._add_info(infos, "true_episode_return", self._returns.copy(), done & ~self._autoreset)
        if frames is not None:
            self._cut_clips(frames, true_rewards, terminated, truncated)
        self._autoreset = done
        return obs, rewards, terminated, truncated, infos

    def _render(self) -> tuple[np.ndarray, ...]:
        if self.hide_action:
            for env in self.env.envs:
                setattr(env.unwrapped, self.hide_action, None)  # used for drawing only, never by the dynamics
        return self.env.render()

    def _inputs(self, frames: list[np.ndarray]) -> np.ndarray:
        """The reward model's inputs (B, S, S), or (B, C, S, S) stacked oldest first."""
        if self.frame_stack == 1:
            return np.stack(frames)
        for i, frame in enumerate(frames):
            if self._autoreset[i] or not self._history[i]:  # an episode's first frame: no motion yet
                self._history[i].extend([frame] * self.frame_stack)
            self._history[i].append(frame)
        return np.stack([np.stack(history) for history in self._history])

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
    reward), "frame_size", "frame_stack", "transform", "reward_scale", "clip_frames", "max_clips",
    "frames_in_infos", "render_action" (False: hide the action the env draws, see ACTION_OVERLAYS),
    "attempts", "timeout_s".
    """
    env_id, num_envs = config["env_id"], int(config.get("num_envs", 1))
    vector = SyncVectorEnv([lambda: gym.make(env_id, render_mode="rgb_array") for _ in range(num_envs)])
    score = RewardClient(config.get("attempts", 3), config.get("timeout_s", 30.0)) if config.get("learned") else None
    return LearnedRewardVectorEnv(vector, score, config.get("frame_size", 64), config.get("transform", "identity"),
                                  config.get("reward_scale", 1.0), config.get("clip_frames", 50),
                                  config.get("max_clips", 400), config.get("frames_in_infos", False),
                                  config.get("frame_stack", 1),
                                  None if config.get("render_action", True) else ACTION_OVERLAYS[env_id])


def find_wrapper(env: gym.Env | gym.vector.VectorEnv) -> LearnedRewardVectorEnv:
    """The `LearnedRewardVectorEnv` inside an EnvRunner's `env` (RLlib wraps it in `DictInfoToList`).

    Raises LookupError when there is none.
    """
    while not isinstance(env, LearnedRewardVectorEnv):
        if not hasattr(env, "env"):
            raise LookupError(f"find_wrapper: no LearnedRewardVectorEnv inside {env!r}")
        env = env.env
    return env
