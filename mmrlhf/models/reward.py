"""Reward model: a CLIP dual encoder plus a learned scoring head.

CLIP (Radford et al. 2021) via open_clip: image tower and text tower map into one embedding
space; their cosine similarity is the zero-shot match score (CLIPScore, Hessel et al. 2021).
A video is embedded as the mean of a few sampled frames' normalised embeddings, normalised again
(`RewardModel.encode_image`), then scored against the text like an image.
The head turns that into a reward trained with Bradley–Terry on preference pairs:

    score = w * cos(e_img, e_txt) + b + MLP(e_img * e_txt)      e_*: L2-normalised, (B, E)

`w` starts at CLIP's own logit scale exp(logit_scale) and `b` at 0; the MLP's last layer starts
at zero, so an untrained head reproduces CLIP's similarity logit and training only adds to it.
Weights are saved and loaded as safetensors only; nothing here ever unpickles a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import MaybeConvertMode, MaybeToTensor
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import CenterCrop, Compose, Normalize, Resize

from mmrlhf.models.policy import as_rgb_uint8

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "mmrlhf-reward-model"
VIDEO_FRAMES = 4  # frames of a video the reward model embeds (their mean embedding is the video's)
CLIPSCORE_W = 2.5  # Hessel et al. 2021, section 3: rescales cosines of ViT-B/32 CLIP to roughly [0, 1]


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor, w: float = CLIPSCORE_W) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021, eq. 1): ``w * max(cos(e_img, e_txt), 0)``, no learned head.

    image_emb, text_emb: (B, E), L2-normalised, so their row-wise dot product is the cosine.
    Returns (B,) in [0, w].
    """
    return w * (image_emb * text_emb).sum(-1).clamp(min=0)


def register_clip_config(name: str, config: dict) -> None:
    """Make `name` an open_clip model name for `config` (keys `embed_dim`, `vision_cfg`, `text_cfg`).

    Writes `<name>.json` to a temporary folder, calls `open_clip.add_model_config` on the file
    and deletes the folder: open_clip keeps what it read, and its later rescans skip a file
    that is gone, so nothing is left in /tmp even when the process is killed. A registration
    replaces an earlier one of the same name. Raises ValueError on a config that lacks one of
    the three keys (open_clip would silently ignore it).
    """
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"open_clip config {name!r}: missing keys {missing}")
    if open_clip.get_model_config(name) == config:
        return
    with tempfile.TemporaryDirectory(prefix="mmrlhf-open-clip-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def build_clip(name: str, pretrained: str | None = None, preprocess_cfg: dict | None = None):
    """Create an open_clip model: `open_clip.create_model_and_transforms(name, pretrained=...)`.

    name: a registered name (built-in like "ViT-B-32", or one from `register_clip_config`).
    pretrained: an open_clip tag ("laion2b_s34b_b79k", downloads) or None for random weights.
    preprocess_cfg: overrides of the image transform (`mean`, `std`, `interpolation`,
    `resize_mode`), used when reloading a model whose tag chose them.
    Returns (clip, image_transform: PIL image -> (3, H, W) float tensor, tokenizer: list[str] -> (B, L)).
    Raises ValueError for an unknown name.
    """
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"open_clip model {name!r} is not registered; known: {open_clip.list_models()[:8]}...")
    cfg = preprocess_cfg or {}
    clip, _, image_transform = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained,
        image_mean=cfg.get("mean"),
        image_std=cfg.get("std"),
        image_interpolation=cfg.get("interpolation"),
        image_resize_mode=cfg.get("resize_mode"),
    )
    return clip, image_transform, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def _no_random_init_warning():
    """Drop open_clip's root-logger warning that a model built without a pretrained tag is random.

    `RewardModel.from_pretrained` loads its own weights right after building, so the warning
    ("No pretrained weights loaded ... initialized randomly") would only alarm.
    """
    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class RewardModel(nn.Module):
    """CLIP dual encoder + scoring head; `forward(pixel_values, text_tokens) -> scores (B,)`.

    clip_name / pretrained: as in `build_clip`. head_hidden: width of the head's MLP.
    Source: CLIP, Radford et al. 2021 via open_clip; head as in the module docstring.
    """

    def __init__(self, clip_name: str, pretrained: str | None = None, head_hidden: int = 64,
                 preprocess_cfg: dict | None = None):
        super().__init__()
        self.clip, self.image_transform, self.tokenizer = build_clip(clip_name, pretrained, preprocess_cfg)
        self.clip_name, self.pretrained, self.head_hidden = clip_name, pretrained, head_hidden
        embed_dim = open_clip.get_model_config(clip_name)["embed_dim"]
        self.scale = nn.Parameter(self.clip.logit_scale.detach().exp().clone().reshape(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(embed_dim, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, pixel_values: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, H, W) or (B, K, 3, H, W) from `preprocess`; text_tokens (B, L) from
        `tokenize` -> scores (B,)."""
        image_emb = self.encode_image(pixel_values)  # (B, E)
        text_emb = self.clip.encode_text(text_tokens, normalize=True)  # (B, E)
        return self.score_embeddings(image_emb, text_emb)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The joint embedding of images (B, 3, H, W), or of videos as K sampled frames each
        (B, K, 3, H, W) -> (B, E), L2-normalised.

        A video's embedding is the mean of its frames' L2-normalised embeddings, normalised again
        so the head still sees a unit vector (its dot product with a text embedding a cosine);
        an image given as K equal frames gets its own embedding (up to rounding).
        """
        if pixel_values.ndim == 4:
            return self.clip.encode_image(pixel_values, normalize=True)
        frames = self.clip.encode_image(pixel_values.flatten(0, 1), normalize=True)  # (B * K, E)
        return F.normalize(frames.unflatten(0, pixel_values.shape[:2]).mean(1), dim=-1)  # (B, E)

    def score_embeddings(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """The head alone: L2-normalised image_emb, text_emb (B, E) -> scores (B,).

        Lets training encode an image once and score several texts against it.
        """
        joint = image_emb * text_emb  # (B, E); sums to the cosine
        return self.scale * joint.sum(-1) + self.bias + self.mlp(joint).squeeze(-1)

    def preprocess(self, images: list[np.ndarray], video_frames: int = VIDEO_FRAMES) -> torch.Tensor:
        """uint8 images (H, W) grayscale or (H, W, 3) RGB -> (B, 3, S, S) float, CLIP-normalised.

        When an item is a video, uint8 frames (F, H, W, 3), every item becomes ``video_frames``
        frames -> (B, K, 3, S, S): a video's frames evenly spread over it (`np.linspace`, rounded;
        repeats when F < K), an image repeated (see `encode_image`).

        Uses the open_clip evaluation transform (resize, centre crop, normalise). Images already at
        the transform's square size skip Pillow: for them resize and crop are the identity, and the
        rest is done on the whole batch at once (`canvas_preprocess`), bit for bit the same
        values; the per-image Pillow round trip was about a quarter of a reward call's time on the
        digits canvas (py-spy, benchmarks/reward_serving.py).
        Raises ValueError naming the index of a non-uint8 or badly shaped image.
        """
        if any(np.ndim(im) == 4 for im in images):
            frames = [im[np.rint(np.linspace(0, len(im) - 1, video_frames)).astype(int)] if np.ndim(im) == 4
                      else [im] * video_frames for im in images]
            flat = self.preprocess([frame for item in frames for frame in item])  # (B * K, 3, S, S)
            return flat.unflatten(0, (len(images), video_frames))
        rgb = [as_rgb_uint8(im, i) for i, im in enumerate(images)]
        canvas = canvas_transform(self.image_transform)
        if canvas is not None and rgb and all(im.shape[:2] == (canvas[0], canvas[0]) for im in rgb):
            return canvas_preprocess(rgb, *canvas[1:])
        return torch.stack([self.image_transform(Image.fromarray(im)) for im in rgb])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> (B, L) int64 tokens, L = the text tower's context length (longer texts are cut).

        An empty text encodes as start + end tokens only, so its score is still finite.
        """
        return self.tokenizer(list(texts))

    def config(self) -> dict:
        """What `config.json` holds: format tag, open_clip name and config, tag, preprocessing, head width."""
        return {
            "format": FORMAT,
            "clip_model": self.clip_name,
            "clip_config": open_clip.get_model_config(self.clip_name),
            "pretrained": self.pretrained,
            "preprocess_cfg": dict(self.clip.visual.preprocess_cfg),
            "head_hidden": self.head_hidden,
        }

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write `config.json` (open_clip name and config, preprocessing, head sizes) and `model.safetensors`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
        save_model(self, str(out_dir / WEIGHTS_FILE))
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> "RewardModel":
        """Rebuild from `save_pretrained` output; reads only `config.json` and `model.safetensors`.

        Raises FileNotFoundError naming a missing file, ValueError for a foreign config.json.
        """
        config = read_config(model_dir)
        register_clip_config(config["clip_model"], config["clip_config"])
        with _no_random_init_warning():
            model = cls(config["clip_model"], None, config["head_hidden"], config["preprocess_cfg"])
        model.load_weights(model_dir)
        return model.to(device)

    def load_weights(self, model_dir: str | Path) -> None:
        """Copy the safetensors weights of `model_dir` into this model in place (strict key match).

        Raises FileNotFoundError if `model.safetensors` is missing, RuntimeError on a key or shape mismatch.
        """
        path = Path(model_dir) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"reward model weights not found: {path}")
        load_model(self, str(path), strict=True, device=str(self.bias.device))


def canvas_transform(transform) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(S, mean (3, 1, 1), std (3, 1, 1)) when `transform` is open_clip's evaluation transform to a
    square S x S (Resize(S), CenterCrop(S), RGB, to-tensor, Normalize), else None."""
    steps = transform.transforms if isinstance(transform, Compose) else []
    kinds = (Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize)
    if len(steps) != len(kinds) or not all(isinstance(step, kind) for step, kind in zip(steps, kinds)):
        return None
    resize, crop, mode, _, normalize = steps
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    if size is None or tuple(crop.size) != (size, size) or mode.mode != "RGB":
        return None
    as_column = lambda values: torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1, 1)  # noqa: E731
    return size, as_column(normalize.mean), as_column(normalize.std)


def canvas_preprocess(images: list[np.ndarray], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """B uint8 (S, S, 3) images -> (B, 3, S, S) float32, as torchvision's `to_tensor` then `normalize`
    compute each image (channels first, / 255, - mean, / std), on the whole batch at once."""
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S) uint8
    return pixels.to(torch.float32).div(255).sub_(mean).div_(std)


def read_config(model_dir: str | Path) -> dict:
    """The `config.json` of a saved reward model. Raises FileNotFoundError / ValueError naming the path."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"reward model config not found: {path}")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not a reward model config (format={config.get('format')!r}, expected {FORMAT!r})")
    return config
