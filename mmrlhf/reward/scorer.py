"""`RewardScorer`: batch scoring with the reward model, no Ray (Serve, the trainer and eval wrap it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmrlhf.models.reward import RewardModel, read_config


class RewardScorer:
    """Scores (image, text) pairs with a `RewardModel` in eval mode, under `torch.no_grad()`.

    Empty texts are scored too: they tokenize to start + end tokens and get a finite score
    (typically a poor one once trained); callers decide whether to special-case them.
    """

    def __init__(self, model: RewardModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> "RewardScorer":
        """Load a folder written by `RewardModel.save_pretrained` (safetensors only)."""
        return cls(RewardModel.from_pretrained(model_dir), device)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W) or (H, W, 3) images -> (B, 3, S, S) float on CPU (open_clip eval transform).

        Raises ValueError naming the index of a non-uint8 or badly shaped image.
        """
        return self.model.preprocess(images)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> (B, L) int64 open_clip tokens, cut to the model's context length."""
        return self.model.tokenize(texts)

    @torch.no_grad()
    def score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Reward of each (image, text) pair -> float32 (B,), unitless (a Bradley–Terry logit scale).

        Raises ValueError if the lists differ in length or an image is not uint8 (H, W[, 3]).
        """
        if len(images) != len(texts):
            raise ValueError(f"RewardScorer.score: {len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0, dtype=np.float32)
        pixel_values = self.preprocess(images).to(self.device)
        tokens = self.tokenize(texts).to(self.device)
        return self.model(pixel_values, tokens).float().cpu().numpy()

    def load_weights(self, model_dir: str | Path) -> None:
        """Swap in the weights saved in `model_dir` in place (same architecture; safetensors only).

        Raises ValueError if `model_dir` holds another architecture (open_clip name, config or head size).
        """
        keys = ("clip_model", "clip_config", "head_hidden")
        theirs, mine = read_config(model_dir), self.model.config()
        if any(theirs[key] != mine[key] for key in keys):
            raise ValueError(f"{model_dir}: reward model {theirs['clip_model']!r} (head {theirs['head_hidden']}) "
                             f"does not match the loaded {mine['clip_model']!r} (head {mine['head_hidden']})")
        self.model.load_weights(model_dir)
