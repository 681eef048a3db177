"""What an agent run reports: Ray metrics (`mmrlhf_agent_*`, served on the dashboard like
`mmrlhf.metrics`), one JSON line per RLlib iteration, and a PNG of the return curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
from ray.util.metrics import Gauge

# row key -> (Ray gauge name, description)
AGENT_GAUGES = {
    "learned_return": ("mmrlhf_agent_learned_return", "mean episode return under the reward the agent trains on"),
    "true_return": ("mmrlhf_agent_true_return", "mean episode return under the environment's own reward"),
    "pairs": ("mmrlhf_agent_pairs", "labelled clip pairs the reward model is trained on"),
    "reward/accuracy": ("mmrlhf_agent_reward_accuracy",
                        "reward-model agreement with the true order on the newest queries, before training on them"),
    "env_steps": ("mmrlhf_agent_env_steps", "environment steps sampled so far"),
}


class AgentLog:
    """Sets the gauges and appends each row to `path` (JSON lines). Values that are missing or NaN
    leave their gauge as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.gauges = {key: Gauge(name, description) for key, (name, description) in AGENT_GAUGES.items()}
        self.rows: list[dict] = []

    def record(self, row: dict) -> None:
        """Record one iteration's row (JSON-serialisable numbers)."""
        for key, gauge in self.gauges.items():
            value = row.get(key)
            if value is not None and math.isfinite(value):
                gauge.set(float(value))
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def final_return(rows: list[dict], fraction: float = 0.2) -> float:
    """The true return at the end of a run: the mean of the iterations' ``true_return`` over the
    last ``fraction`` of its env steps (iterations in which no episode ended are NaN and skipped).

    RLlib reports an iteration's mean over the episodes that ended in it, so one iteration is a
    handful of episodes (two on Pendulum with 2 envs); the window makes the end point steadier.
    Raises ValueError when no iteration in the window has a finite return.
    """
    last = rows[-1]["env_steps"]
    window = [r["true_return"] for r in rows
              if r["env_steps"] >= (1 - fraction) * last and math.isfinite(r["true_return"])]
    if not window:
        raise ValueError(f"final_return: no episode ended in the last {fraction:.0%} of {last} env steps")
    return float(np.mean(window))


def random_return(env_id: str, episodes: int, seed: int) -> float:
    """Mean true return of uniformly random actions over `episodes` episodes (the random baseline)."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def plot_curves(path: Path, curves: dict[str, tuple[list[float], list[float]]], random: float | None,
                title: str) -> Path:
    """PNG of true-return curves {label: (env steps, returns)} and the random policy's level.
    NaN returns (iterations in which no episode ended) are left out of the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, returns) in curves.items():
        points = [(x, y) for x, y in zip(steps, returns) if math.isfinite(y)]  # iterations with an ended episode
        if points:
            ax.plot(*zip(*points), label=label)
    if random is not None:
        ax.axhline(random, color="grey", linestyle="--", label="random policy")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("true episode return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
