"""`mmrlhf agent train`: an RLlib agent trained on the Serve reward model learned from clip
preferences (Christiano et al. 2017), or on the environment's reward (`reward: env`, the baseline).

The loop reads like the paper's figure 1: the policy samples (RLlib EnvRunners, rewards from
Serve), the annotator compares clips, the reward model is retrained and swapped in place.
Outputs under `<run_dir>/agent/`: metrics.jsonl, curves.png, reward/v<k>/, clips/.
"""

from __future__ import annotations

import os
from typing import Callable

import ray
from ray import serve
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

from mmrlhf.agents.algorithm import TRUE_RETURN, algorithm_config, relabels
from mmrlhf.agents.config import AgentConfig
from mmrlhf.agents.report import AgentLog, plot_curves, random_return
from mmrlhf.agents.reward_loop import RewardModelLoop, relabel_replay_buffer, sample_random, take_clips
from mmrlhf.agents.serve_reward import APP_NAME
from mmrlhf.cluster import init_ray, shutdown_ray
from mmrlhf.config import save_config

MAX_INITIAL_SAMPLES = 10  # rounds of random sampling for the first 2 clips; then loop.round names the shortfall


def train_agent(cfg: AgentConfig, echo: Callable[[str], None] = print) -> list[dict]:
    """Run one agent (Ray must be initialised). Returns the rows of metrics.jsonl, one per iteration:
    env_steps (every env step taken, random initial clips included), learned_return, true_return,
    and in rounds the reward model's metrics."""
    out = cfg.run_path / "agent"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    log = AgentLog(out / "metrics.jsonl")
    prefs = cfg.preferences
    loop = RewardModelLoop(cfg, out) if cfg.reward == "learned" else None
    algo = algorithm_config(cfg).build_algo()
    try:
        random_steps, rounds = 0, 0
        if loop is not None:
            # ALGO: first queries over clips of random behaviour, before any policy update
            clips = []
            for _ in range(MAX_INITIAL_SAMPLES):  # short random episodes can leave too few clips at first
                random_steps += sample_random(algo, prefs.initial_env_steps)
                clips += take_clips(algo)
                if len(clips) >= 2:
                    break
            reward_metrics = loop.round(clips, prefs.initial_pairs)
        iteration, steps = 0, random_steps
        while steps < cfg.rl.env_steps:
            result = algo.train()  # ALGO: policy update on rewards from the Serve reward model
            runners = result[ENV_RUNNER_RESULTS]
            # the EnvRunners' lifetime count includes the random steps of the first clips
            steps = int(result[NUM_ENV_STEPS_SAMPLED_LIFETIME])
            row = {"iteration": iteration, "env_steps": steps,
                   "learned_return": float(runners.get(EPISODE_RETURN_MEAN, float("nan"))),
                   "true_return": float(runners.get(TRUE_RETURN, float("nan")))}
            if loop is not None and (iteration + 1) % prefs.retrain_every == 0 and rounds < prefs.rounds:
                # ALGO: query the most disputed pairs of recent clips, retrain, swap into Serve
                reward_metrics = loop.round(take_clips(algo), prefs.pairs_per_round)
                if relabels(cfg):  # ALGO: the replay buffer's rewards become the new model's (PEBBLE)
                    reward_metrics["reward/relabelled"] = relabel_replay_buffer(
                        algo.local_replay_buffer, loop.ensemble, cfg.env.transform, cfg.env.reward_scale)
                rounds += 1
            if loop is not None:
                row |= reward_metrics
            log.record(row)
            echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            iteration += 1
    finally:
        algo.stop()
    curves = {f"{cfg.rl.algorithm.upper()}, {cfg.reward} reward": ([r["env_steps"] for r in log.rows],
                                                                      [r["true_return"] for r in log.rows])}
    plot_curves(out / "curves.png", curves, random_return(cfg.env.env_id, 20, cfg.seed), cfg.env.env_id)
    return log.rows


def run_agent_train(cfg: AgentConfig) -> list[dict]:
    """`mmrlhf agent train`: `train_agent` on the cluster at RAY_ADDRESS (a submitted job) or on a
    new local one (4 logical CPUs, no dashboard), which it stops afterwards; on a joined cluster it
    removes only its own Serve application."""
    local = not os.environ.get("RAY_ADDRESS")
    owned = not ray.is_initialized()
    if owned:
        init_ray(num_cpus=4 if local else None, include_dashboard=False if local else None)
    try:
        rows = train_agent(cfg)
        if not local and cfg.reward == "learned":
            serve.delete(APP_NAME)  # a shared cluster's other Serve applications stay up
        return rows
    finally:
        if owned:
            shutdown_ray(shutdown_serve=local)
