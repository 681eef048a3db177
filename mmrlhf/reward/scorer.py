"""`RewardScorer`: batch scoring with the reward model, no Ray (Serve, the trainer and eval wrap it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmrlhf.models.reward import RewardModel, clip_score, read_config

EMBED_BATCH = 64  # items per forward pass of one tower when embedding a whole split


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
        """uint8 (H, W) or (H, W, 3) images -> (B, 3, S, S) float on CPU (open_clip eval transform);
        with videos (F, H, W, 3) among them, (B, K, 3, S, S) sampled frames (`RewardModel.preprocess`).

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

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray], batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """The joint embedding of images: uint8 (H, W) or (H, W, 3), or videos (F, H, W, 3) (mean of
        sampled frames, `RewardModel.encode_image`) -> (N, E) float32 on CPU, L2-normalised.

        Raises ValueError naming the index of a non-uint8 or badly shaped image.
        """
        if not images:
            return torch.zeros(0, self.embed_dim)
        pixels = self.preprocess(images)  # (N, 3, S, S), all first so an error names the image's own index
        return torch.cat([self.model.encode_image(pixels[i:i + batch_size].to(self.device))
                          for i in range(0, len(images), batch_size)]).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """The joint embedding of texts -> (N, E) float32 on CPU, L2-normalised (cut to the context length)."""
        parts = [self.model.clip.encode_text(self.tokenize(texts[i:i + batch_size]).to(self.device), normalize=True)
                 for i in range(0, len(texts), batch_size)]
        return torch.cat(parts).float().cpu() if parts else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        """E, the width of the joint embedding."""
        return int(self.model.mlp[0].in_features)

    def clip_score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Zero-shot CLIPScore of each (image, text) pair from the joint embedding, without the
        head (:func:`mmrlhf.models.reward.clip_score`) -> float32 (B,) in [0, 2.5].

        Raises ValueError if the lists differ in length or an image is not uint8 (H, W[, 3]).
        """
        if len(images) != len(texts):
            raise ValueError(f"RewardScorer.clip_score: {len(images)} images but {len(texts)} texts")
        return clip_score(self.embed_images(images), self.embed_texts(texts)).numpy()

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
