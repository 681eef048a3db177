"""The frame reward model: an ensemble of small CNNs r(o) over downsampled grey frames.

o is one frame (S, S), or with `channels` C > 1 the last C frames stacked (C, S, S), oldest first,
so that r can see motion (Christiano et al. 2017 stack frames for Atari; a pendulum's cost counts
its angular velocity, which no single frame shows).

Christiano et al. 2017 (section 2.2.1): each member is trained with Bradley-Terry on clip pairs
(`clip_preference_loss`) on its own bootstrap resample of the pairs; the served reward is the
members' mean, standardised to zero mean and unit standard deviation over the training frames
(the paper normalises r-hat the same way). The CNN follows the Atari encoder of Mnih et al. 2015,
made smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mmrlhf.algorithms.clip_preference import clip_preference_loss

WEIGHTS_FILE = "frame_reward.pt"


def _shape_text(shape: tuple[int, ...]) -> str:
    """A shape as error messages write it: (2, 32, 32) -> "2, 32, 32"."""
    return ", ".join(map(str, shape))


class FrameRewardCNN(nn.Module):
    """r(o): grey frames uint8 (N, S, S), or stacks (N, C, S, S), S >= 32 -> rewards (N,) float32."""

    def __init__(self, size: int = 64, channels: int = 1) -> None:
        super().__init__()
        if size < 32 or channels < 1:
            raise ValueError(f"FrameRewardCNN: frame size {size}, channels {channels}, expected >= 32 and >= 1")
        self.size = size
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.encoder(torch.zeros(1, channels, size, size)).shape[1]
        self.head = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (N, S, S) or (N, C, S, S), uint8 or float in [0, 255] -> (N,)."""
        x = frames.to(torch.float32) / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x  # (N, C, S, S)
        return self.head(self.encoder(x)).squeeze(1)


@dataclass
class Normalizer:
    """Affine standardisation of the ensemble mean: (r - mean) / std."""

    mean: float = 0.0
    std: float = 1.0


class FrameRewardEnsemble:
    """E `FrameRewardCNN` members and the `Normalizer` of their mean.

    Built fresh (`FrameRewardEnsemble(members=3, size=64, seed=0, channels=1)`) or loaded (`load`).
    """

    def __init__(self, members: int = 3, size: int = 64, seed: int = 0, channels: int = 1) -> None:
        if members < 1:
            raise ValueError(f"FrameRewardEnsemble: members={members}, expected >= 1")
        with torch.random.fork_rng():  # seeded members without touching the caller's generator
            torch.manual_seed(seed)
            self.members = [FrameRewardCNN(size, channels) for _ in range(members)]
        self.size, self.channels = size, channels
        self.normalizer = Normalizer()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape: (S, S) with one channel, else (C, S, S)."""
        return (self.size, self.size) if self.channels == 1 else (self.channels, self.size, self.size)

    def check_frames(self, frames: np.ndarray | Tensor, caller: str, batch: str = "N") -> np.ndarray:
        """`frames` as a numpy array, after checking it is uint8 (batch, *input_shape).

        Raises ValueError naming `caller`, the expected and the given dtype and shape.
        """
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != self.input_shape:
            raise ValueError(f"{caller}: frames must be uint8 ({batch}, {_shape_text(self.input_shape)}), "
                             f"got {frames.dtype} {frames.shape}")
        return frames

    @torch.no_grad()
    def member_rewards(self, frames: np.ndarray | Tensor) -> Tensor:
        """frames: uint8 (N, *input_shape) -> raw per-member rewards (E, N)."""
        x = torch.as_tensor(np.asarray(frames))
        return torch.stack([m(x) for m in self.members])

    def rewards(self, frames: np.ndarray | Tensor) -> np.ndarray:
        """frames: uint8 (N, *input_shape) -> the served reward float32 (N,): standardised member mean.

        Raises ValueError for frames of the wrong shape or dtype.
        """
        frames = self.check_frames(frames, "FrameRewardEnsemble.rewards")
        mean = self.member_rewards(frames).mean(dim=0).numpy()
        return ((mean - self.normalizer.mean) / self.normalizer.std).astype(np.float32)

    def save(self, directory: str | Path) -> Path:
        """Write the members and normaliser to `directory/frame_reward.pt`; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"size": self.size, "channels": self.channels, "members": [m.state_dict() for m in self.members],
                    "mean": self.normalizer.mean, "std": self.normalizer.std}, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FrameRewardEnsemble":
        """Read what `save` wrote (tensors only: `torch.load(weights_only=True)`).

        Raises FileNotFoundError naming the missing file.
        """
        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"frame reward model: {path} does not exist")
        state = torch.load(path, weights_only=True)
        ensemble = cls(members=len(state["members"]), size=state["size"], channels=state["channels"])
        for member, weights in zip(ensemble.members, state["members"]):
            member.load_state_dict(weights)
        ensemble.normalizer = Normalizer(state["mean"], state["std"])
        return ensemble


def random_shift(clips: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each clip's frames by one random offset of up to `pad` pixels each way (the image
    augmentation of DrQ, Kostrikov et al. 2020: replicate-pad by `pad`, crop back at a random corner).

    clips: (N, L, S, S) or (N, L, C, S, S) -> the same shape and dtype; every frame of a clip (and
    every frame of a stack) moves together, so motion between frames is kept.
    """
    if pad == 0:
        return clips
    shape, size = clips.shape, clips.shape[-1]
    flat = clips.reshape(shape[0], -1, size, size).float()  # (N, L*C, S, S)
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="replicate")
    corners = torch.randint(0, 2 * pad + 1, (shape[0], 2), generator=generator)
    crops = [padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(corners.tolist())]
    return torch.stack(crops).to(clips.dtype).reshape(shape)


def train_member(member: FrameRewardCNN, clips_1: Tensor, clips_2: Tensor, mu: Tensor, steps: int,
                 batch_pairs: int, lr: float, generator: torch.Generator, augment_shift: int = 0,
                 weight_decay: float = 0.0) -> float:
    """Train one member with Adam (decoupled `weight_decay`: AdamW) on bootstrap batches of pairs,
    each clip shifted by `random_shift(augment_shift)`; returns the last batch's loss.

    clips_1, clips_2: uint8 (P, L, *input_shape) the pairs' clips; mu: (P,) labels (see
    `clip_preference_loss`). Each step draws `batch_pairs` pair indices with replacement.
    """
    optimizer = torch.optim.AdamW(member.parameters(), lr=lr, weight_decay=weight_decay)
    pairs, length = clips_1.shape[:2]
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        index = torch.randint(pairs, (batch_pairs,), generator=generator)  # bootstrap resample
        clips = random_shift(torch.cat([clips_1[index], clips_2[index]]), augment_shift, generator)
        frames = clips.flatten(0, 1)  # (2 * b * L, *input_shape)
        rewards = member(frames).view(2, batch_pairs, length)  # (2, b, L)
        loss, _ = clip_preference_loss(rewards[0], rewards[1], mu[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def train_ensemble(ensemble: FrameRewardEnsemble, clips_1: np.ndarray, clips_2: np.ndarray, mu: np.ndarray,
                   steps: int = 100, batch_pairs: int = 16, lr: float = 1e-3, seed: int = 0,
                   augment_shift: int = 0, weight_decay: float = 0.0) -> dict[str, float]:
    """Continue training every member on the pairs (`train_member`), then refit the normaliser.

    clips_1, clips_2: uint8 (P, L, *input_shape); mu: (P,) in [0, 1]. The normaliser becomes the mean and
    standard deviation of the members' mean reward over every frame of the pairs.
    Returns {"reward/loss": mean of the members' last losses, "reward/train_accuracy"}.
    Raises ValueError on mismatched shapes or no pairs.
    """
    if (clips_1.shape != clips_2.shape or clips_1.shape[2:] != ensemble.input_shape or len(clips_1) == 0
            or mu.shape != (len(clips_1),)):
        raise ValueError(f"train_ensemble: clips {clips_1.shape} / {clips_2.shape} and mu {mu.shape}: expected "
                         f"two uint8 (P, L, {_shape_text(ensemble.input_shape)}) arrays with P >= 1 and mu (P,)")
    c1, c2, labels = torch.from_numpy(clips_1), torch.from_numpy(clips_2), torch.from_numpy(mu).float()
    generator = torch.Generator().manual_seed(seed)
    losses = [train_member(m, c1, c2, labels, steps, min(batch_pairs, len(c1)), lr, generator, augment_shift,
                           weight_decay) for m in ensemble.members]
    frames = np.concatenate([clips_1, clips_2]).reshape(-1, *ensemble.input_shape)
    mean_rewards = ensemble.member_rewards(frames).mean(dim=0)  # (2 * P * L,)
    ensemble.normalizer = Normalizer(float(mean_rewards.mean()), float(mean_rewards.std().clamp_min(1e-6)))
    sums = mean_rewards.view(2, len(c1), -1).sum(dim=2)  # (2, P)
    _, metrics = clip_preference_loss(sums[0:1].T, sums[1:2].T, labels)
    return {"reward/loss": float(np.mean(losses)), "reward/train_accuracy": float(metrics["reward/accuracy"])}
