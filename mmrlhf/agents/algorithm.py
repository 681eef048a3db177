"""The RLlib algorithm config (new API stack) for an agent run: PPO or SAC on the learned-reward
vector env (`mmrlhf.agents.env.make_env`, registered with Tune's env registry)."""

from __future__ import annotations

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.tune.registry import register_env

from mmrlhf.agents.config import AgentConfig
from mmrlhf.agents.env import ENV_NAME, make_env

TRUE_RETURN = "true_episode_return_mean"  # key of the true return in result["env_runners"]


def log_true_return(*, episode, metrics_logger, **_) -> None:
    """`on_episode_end` callback: the episode's true return (the env's own reward), averaged over the
    last 100 episodes like RLlib's `episode_return_mean`."""
    metrics_logger.log_value(TRUE_RETURN, float(episode.get_infos(-1)["true_episode_return"]), reduce="mean",
                             window=100)


def clip_frames(env_id: str, seconds: float) -> int:
    """Frames in a clip of `seconds` at the env's `render_fps` (CartPole 50, Pendulum 30)."""
    env = gym.make(env_id)
    env.close()
    return round(seconds * env.metadata["render_fps"])


def env_config(cfg: AgentConfig) -> dict:
    """The env_config every EnvRunner passes to `make_env`."""
    return {"env_id": cfg.env.env_id, "learned": cfg.reward == "learned", "frame_size": cfg.env.frame_size,
            "frame_stack": cfg.env.frame_stack, "render_action": cfg.env.render_action,
            "transform": cfg.env.transform, "reward_scale": cfg.env.reward_scale,
            "clip_frames": clip_frames(cfg.env.env_id, cfg.env.clip_seconds), "max_clips": cfg.preferences.max_clips,
            "frames_in_infos": relabels(cfg)}


def relabels(cfg: AgentConfig) -> bool:
    """Whether the run relabels its replay buffer after each reward-model retrain (learned SAC)."""
    return cfg.reward == "learned" and cfg.rl.algorithm == "sac" and cfg.preferences.relabel


def algorithm_config(cfg: AgentConfig) -> AlgorithmConfig:
    """PPOConfig or SACConfig for `cfg`; the state-vector policy is an MLP of `rl.hidden` widths."""
    register_env(ENV_NAME, make_env)
    rl = cfg.rl
    if rl.algorithm == "ppo":
        config = PPOConfig().training(lr=rl.lr, gamma=rl.gamma, train_batch_size_per_learner=rl.train_batch_size,
                                      minibatch_size=rl.minibatch_size, num_epochs=rl.num_epochs, vf_loss_coeff=0.01)
    else:
        config = SACConfig().training(actor_lr=rl.actor_lr, critic_lr=rl.critic_lr, gamma=rl.gamma,
                                      train_batch_size_per_learner=rl.train_batch_size,
                                      num_steps_sampled_before_learning_starts=rl.learning_starts,
                                      replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 100_000})
    return (config.environment(ENV_NAME, env_config=env_config(cfg))
            .env_runners(num_env_runners=rl.env_runners, num_envs_per_env_runner=cfg.env.num_envs,
                         gym_env_vectorize_mode="vector_entry_point", num_cpus_per_env_runner=1)
            .learners(num_learners=0)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(rl.hidden), fcnet_activation="tanh"
                                                       if rl.algorithm == "ppo" else "relu"))
            .callbacks(on_episode_end=log_true_return)
            .debugging(seed=cfg.seed))
