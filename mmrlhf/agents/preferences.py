"""Preference queries over clips of the current policy (Christiano et al. 2017, section 2.2).

`select_queries` draws random candidate pairs among the clips and keeps those the reward-model
ensemble disagrees on most (`ensemble_disagreement`); `simulated_labels` answers them from the
true returns with label noise (the paper's synthetic annotator; a tie is "equally good", 0.5);
`PairSet` is the growing set the reward model is retrained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmrlhf.agents.env import Clip
from mmrlhf.agents.reward_model import FrameRewardEnsemble
from mmrlhf.algorithms.clip_preference import ensemble_disagreement, most_uncertain


def simulated_labels(true_returns_1: np.ndarray, true_returns_2: np.ndarray, noise: float,
                     rng: np.random.Generator) -> np.ndarray:
    """mu (P,): 1 where clip 1's true return is higher, 0 where lower, 0.5 on a tie; then each label is
    replaced, with probability `noise`, by a fair coin (0 or 1).

    true_returns_1, true_returns_2: (P,) sums of the clips' true rewards.
    Raises ValueError for mismatched shapes or noise outside [0, 1].
    """
    if true_returns_1.shape != true_returns_2.shape or not 0.0 <= noise <= 1.0:
        raise ValueError(f"simulated_labels: returns {true_returns_1.shape} / {true_returns_2.shape} must match "
                         f"and noise={noise} must be in [0, 1]")
    mu = np.where(true_returns_1 > true_returns_2, 1.0, np.where(true_returns_1 < true_returns_2, 0.0, 0.5))
    flip = rng.random(mu.shape) < noise
    return np.where(flip, rng.integers(0, 2, mu.shape).astype(float), mu).astype(np.float32)


def select_queries(ensemble: FrameRewardEnsemble, clips: list[Clip], n_queries: int, candidates: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Pairs to ask about: (n_queries, 2) clip indices, the most disputed of `candidates` random pairs.

    Each clip is scored once by every member, (E, C, L); a candidate pair's disagreement is the
    variance over members of P(clip 1 preferred). Raises ValueError with fewer than 2 clips or
    n_queries > candidates.
    """
    if len(clips) < 2 or not 1 <= n_queries <= candidates:
        raise ValueError(f"select_queries: {len(clips)} clips, n_queries={n_queries}, candidates={candidates}: "
                         "need >= 2 clips and 1 <= n_queries <= candidates")
    first = rng.integers(0, len(clips), candidates)
    second = (first + rng.integers(1, len(clips), candidates)) % len(clips)  # never a clip with itself
    frames = np.stack([frames for frames, _ in clips])  # (C, L, S, S)
    rewards = ensemble.member_rewards(frames.reshape(-1, *frames.shape[2:])).view(len(ensemble.members), len(clips), -1)
    disagreement = ensemble_disagreement(rewards[:, first], rewards[:, second])  # (candidates,)
    chosen = most_uncertain(disagreement, n_queries).numpy()
    return np.stack([first[chosen], second[chosen]], axis=1)


@dataclass
class PairSet:
    """Labelled clip pairs: clips_1, clips_2 uint8 (P, L, S, S), mu (P,), true returns (P,) each."""

    clips_1: list[np.ndarray] = field(default_factory=list)
    clips_2: list[np.ndarray] = field(default_factory=list)
    mu: list[float] = field(default_factory=list)
    returns_1: list[float] = field(default_factory=list)
    returns_2: list[float] = field(default_factory=list)

    def add(self, clips: list[Clip], pairs: np.ndarray, mu: np.ndarray) -> None:
        """Append the pairs (Q, 2) of clip indices with their labels mu (Q,)."""
        for (i, j), label in zip(pairs, mu):
            self.clips_1.append(clips[i][0])
            self.clips_2.append(clips[j][0])
            self.returns_1.append(float(clips[i][1].sum()))
            self.returns_2.append(float(clips[j][1].sum()))
            self.mu.append(float(label))

    def __len__(self) -> int:
        return len(self.mu)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clips_1 (P, L, S, S), clips_2 (P, L, S, S), mu (P,)) for `train_ensemble`."""
        return np.stack(self.clips_1), np.stack(self.clips_2), np.array(self.mu, dtype=np.float32)


def true_order_accuracy(ensemble: FrameRewardEnsemble, clips_1: np.ndarray, clips_2: np.ndarray,
                        returns_1: np.ndarray, returns_2: np.ndarray) -> float:
    """Fraction of the pairs with different true returns that the ensemble's clip sums order the same
    way (NaN when every pair is tied). clips uint8 (P, L, S, S), returns (P,)."""
    size = clips_1.shape[2:]
    sums = [torch.as_tensor(ensemble.rewards(c.reshape(-1, *size))).view(len(c), -1).sum(dim=1).numpy()
            for c in (clips_1, clips_2)]
    decided = returns_1 != returns_2
    if not decided.any():
        return float("nan")
    return float(((sums[0] > sums[1]) == (returns_1 > returns_2))[decided].mean())
