"""Typed configuration of `mmrlhf agent train` (defaults ← jobs/agent_<env>.yaml ← key=value),
loaded by `mmrlhf.config.load_config(schema=AgentConfig)`; checks in `__post_init__`, each a
one-line `ConfigError` naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmrlhf.config import _check, _choice, _positive, load_config

ALGORITHMS = ("ppo", "sac")
REWARDS = ("learned", "env")  # "env": the environment's own (true) reward; "true" would parse as a YAML bool
TRANSFORM_NAMES = ("identity", "sigmoid")  # the keys of mmrlhf.agents.env.TRANSFORMS
# Envs whose render draws the last action, not only the state, and the attribute that holds it:
# Pendulum-v1 draws the torque as an arrow around the axle ("self.last_u = u  # for rendering").
ACTION_OVERLAYS = {"Pendulum-v1": "last_u"}


@dataclass
class AgentEnvConfig:
    """The gymnasium environment: `env_id`, `num_envs` sub-envs per EnvRunner (one reward call per
    vector step), frames downsampled to `frame_size` pixels square, the reward model seeing the last
    `frame_stack` frames of each step (2 or more let it see motion), the action drawn by the env's
    renderer kept or hidden (`render_action`; hiding needs an env of `ACTION_OVERLAYS`), `transform`
    of the served reward (see `mmrlhf.agents.env.TRANSFORMS`) times `reward_scale`, clips of
    `clip_seconds` at the env's render_fps."""

    env_id: str = "CartPole-v1"
    num_envs: int = 8
    frame_size: int = 64
    frame_stack: int = 1
    render_action: bool = True
    transform: str = "identity"
    reward_scale: float = 1.0
    clip_seconds: float = 1.0

    def __post_init__(self) -> None:
        _check(self.num_envs >= 1, "env.num_envs", "an integer >= 1", self.num_envs)
        _check(self.frame_size >= 32, "env.frame_size", "an integer >= 32", self.frame_size)
        _check(1 <= self.frame_stack <= 4, "env.frame_stack", "an integer in [1, 4]", self.frame_stack)
        _check(self.render_action or self.env_id in ACTION_OVERLAYS, "env.render_action",
               f"true unless env_id is one of {', '.join(ACTION_OVERLAYS)} (whose action drawing can be hidden)",
               self.render_action)
        _choice("env.transform", self.transform, TRANSFORM_NAMES)
        _positive("env.reward_scale", self.reward_scale)
        _check(1.0 <= self.clip_seconds <= 2.0, "env.clip_seconds", "seconds in [1, 2]", self.clip_seconds)


@dataclass
class AgentRLConfig:
    """The RLlib algorithm (`ppo` or `sac`), trained for `env_steps` environment steps with
    `env_runners` remote EnvRunners (0: sampling in the driver). PPO uses `lr`, `train_batch_size`,
    `minibatch_size`, `num_epochs`; SAC uses `actor_lr`, `critic_lr`, `train_batch_size`,
    `learning_starts`."""

    algorithm: str = "ppo"
    env_steps: int = 100_000
    env_runners: int = 0
    gamma: float = 0.99
    lr: float = 3e-4
    train_batch_size: int = 4000
    minibatch_size: int = 128
    num_epochs: int = 6
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    learning_starts: int = 1000

    def __post_init__(self) -> None:
        _choice("rl.algorithm", self.algorithm, ALGORITHMS)
        for key in ("env_steps", "train_batch_size", "minibatch_size", "num_epochs"):
            _check(getattr(self, key) >= 1, f"rl.{key}", "an integer >= 1", getattr(self, key))
        _check(self.env_runners >= 0, "rl.env_runners", "an integer >= 0", self.env_runners)
        _check(0.0 < self.gamma <= 1.0, "rl.gamma", "a number in (0, 1]", self.gamma)
        for key in ("lr", "actor_lr", "critic_lr"):
            _positive(f"rl.{key}", getattr(self, key))
        _check(bool(self.hidden) and all(h >= 1 for h in self.hidden), "rl.hidden", "a list of layer widths >= 1",
               self.hidden)


@dataclass
class PreferenceConfig:
    """Preference collection (Christiano et al. 2017): `initial_pairs` among the clips of
    `initial_env_steps` random-action env steps before RL, then
    `pairs_per_round` every `retrain_every` iterations until `rounds` rounds, each chosen among
    `candidates` random pairs by ensemble disagreement; a simulated annotator with `label_noise`;
    an ensemble of `members` CNNs retrained `train_steps` AdamW steps of `batch_pairs` pairs at `lr`
    with `weight_decay`, each clip shifted by up to `augment_shift` pixels (DrQ's augmentation).
    `relabel` (off-policy SAC only): after each retrain, rewrite the rewards of every transition in
    the replay buffer with the new model (PEBBLE, Lee et al. 2021)."""

    initial_pairs: int = 100
    initial_env_steps: int = 2000
    pairs_per_round: int = 50
    retrain_every: int = 2
    rounds: int = 8
    candidates: int = 400
    label_noise: float = 0.1
    members: int = 3
    train_steps: int = 150
    batch_pairs: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment_shift: int = 0
    max_clips: int = 200
    relabel: bool = True

    def __post_init__(self) -> None:
        for key in ("initial_pairs", "initial_env_steps", "pairs_per_round", "retrain_every", "members",
                    "train_steps", "batch_pairs", "max_clips"):
            _check(getattr(self, key) >= 1, f"preferences.{key}", "an integer >= 1", getattr(self, key))
        _check(self.rounds >= 0, "preferences.rounds", "an integer >= 0", self.rounds)
        _check(self.candidates >= max(self.initial_pairs, self.pairs_per_round), "preferences.candidates",
               "at least initial_pairs and pairs_per_round", self.candidates)
        _check(0.0 <= self.label_noise <= 1.0, "preferences.label_noise", "a probability in [0, 1]", self.label_noise)
        _positive("preferences.lr", self.lr)
        _positive("preferences.weight_decay", self.weight_decay, zero_ok=True)
        _check(0 <= self.augment_shift <= 8, "preferences.augment_shift", "pixels in [0, 8]", self.augment_shift)


@dataclass
class AgentConfig:
    """One agent run: `reward` "learned" (the Serve reward model, trained from preferences) or
    "env" (the env's own, true reward: the baseline); outputs under `run_dir`; `seed` seeds RLlib, the
    envs, the ensemble and the annotator; `reward_cpus`: logical CPUs of the Serve replica."""

    run_dir: str = "runs/agent"
    seed: int = 0
    reward: str = "learned"
    reward_cpus: float = 0.5
    env: AgentEnvConfig = field(default_factory=AgentEnvConfig)
    rl: AgentRLConfig = field(default_factory=AgentRLConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)

    def __post_init__(self) -> None:
        _choice("reward", self.reward, REWARDS)
        _positive("reward_cpus", self.reward_cpus)

    @property
    def run_path(self) -> Path:
        """The run directory as a `Path`."""
        return Path(self.run_dir)


def load_agent_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AgentConfig:
    """`AgentConfig` from defaults ← YAML ← overrides. Raises ConfigError (one line), FileNotFoundError."""
    return load_config(path, overrides, schema=AgentConfig)
