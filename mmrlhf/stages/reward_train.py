"""Stage 4, reward: the joint image-text representation, then Bradley–Terry on preference pairs.

1. Contrastive warm start (``reward.clip_epochs``): the CLIP dual encoder learns a joint
   embedding from the labeled (image, reference) records with open_clip's symmetric InfoNCE
   ``ClipLoss`` (Radford et al. 2021).
2. Preference training: ``-log σ(r(x, chosen) - r(x, rejected))`` (Bradley & Terry 1952;
   Ouyang et al. 2022 eq. 1) on the pairs of ``mmrlhf feedback``.

Prompts, not pairs, are split into train and held-out, so no image is seen on both sides;
held-out pairwise accuracy goes to ``<run_dir>/reward/metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from open_clip.loss import ClipLoss
from tqdm import tqdm

from mmrlhf.algorithms.preference import bradley_terry_loss
from mmrlhf.config import RunConfig
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table
from mmrlhf.models.presets import resolve_reward
from mmrlhf.models.reward import RewardModel
from mmrlhf.stages.common import RunPaths, atomic_dir, minibatches, seed_everything, write_json
from mmrlhf.stages.data import decode_images, load_split


def initial_reward_model(cfg: RunConfig) -> RewardModel:
    """The untrained reward model: a preset folder, a saved reward model, or an open_clip name + tag."""
    source = resolve_reward(cfg.model.reward, RunPaths(cfg.run_dir).presets)
    if (Path(source) / "config.json").is_file():
        return RewardModel.from_pretrained(source)
    return RewardModel(source, pretrained=cfg.model.reward_pretrained)


def contrastive_warm_start(model: RewardModel, images: torch.Tensor, tokens: torch.Tensor, epochs: int,
                           batch_size: int, lr: float, generator: torch.Generator) -> None:
    """CLIP training of ``model.clip`` on matched (image, text) rows; images ``(N, 3, S, S)``, tokens ``(N, L)``."""
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc="reward/clip", unit="epoch"):
        for idx in minibatches(len(tokens), batch_size, generator):
            image_emb = model.clip.encode_image(images[idx], normalize=True)
            text_emb = model.clip.encode_text(tokens[idx], normalize=True)
            loss = loss_fn(image_emb, text_emb, model.clip.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _pair_tensors(model: RewardModel, pairs: pa.Table, row_of: dict[str, int]) -> tuple[torch.Tensor, ...]:
    rows = torch.tensor([row_of[p] for p in pairs.column("prompt_id").to_pylist()], dtype=torch.long)
    return rows, model.tokenize(pairs.column("chosen").to_pylist()), model.tokenize(pairs.column("rejected").to_pylist())


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, images: torch.Tensor, rows, chosen, rejected) -> float:
    """Share of pairs where ``r(chosen) > r(rejected)``; ``rows`` index ``images`` ``(N, 3, S, S)``."""
    model.eval()
    margins = model(images[rows], chosen) - model(images[rows], rejected)
    return float((margins > 0).float().mean())


def run_reward_training(cfg: RunConfig) -> dict[str, float]:
    """Train and save the reward model; returns ``{"reward/val_accuracy", "reward/train_accuracy", ...}``.

    Raises:
        FileNotFoundError: no preference pairs yet (run ``mmrlhf feedback simulate``).
        ValueError: a pair names a prompt id missing from the feedback split.
    """
    rc = cfg.reward
    generator = seed_everything(cfg.seed + 2)
    paths = RunPaths(cfg.run_dir)
    if not paths.pairs.exists():
        raise FileNotFoundError(f"no preference pairs at {paths.pairs}: run `mmrlhf feedback simulate` first")
    pairs = read_table(paths.pairs, PREFERENCE_SCHEMA)
    feedback = load_split(cfg, "feedback")
    prompt_ids = sorted(set(pairs.column("prompt_id").to_pylist()))
    known = set(feedback.column("id").to_pylist())
    unknown = [p for p in prompt_ids if p not in known]
    if unknown:
        raise ValueError(f"reward: pair prompt_id {unknown[0]!r} is not in the feedback split ({len(unknown)} unknown)")
    feedback = feedback.filter(pa.compute.is_in(feedback.column("id"), pa.array(prompt_ids)))
    row_of = {rid: i for i, rid in enumerate(feedback.column("id").to_pylist())}

    model = initial_reward_model(cfg)
    images = model.preprocess(decode_images(feedback, cfg.data.max_image_pixels))
    if rc.clip_epochs:
        sft = load_split(cfg, "sft")
        contrastive_warm_start(model, model.preprocess(decode_images(sft, cfg.data.max_image_pixels)),
                               model.tokenize(sft.column("reference").to_pylist()), rc.clip_epochs,
                               rc.batch_size, rc.lr, generator)

    held_out = set(np.random.default_rng(cfg.seed).permutation(prompt_ids)[: max(1, int(rc.val_fraction * len(prompt_ids)))])
    is_val = pa.array([p in held_out for p in pairs.column("prompt_id").to_pylist()])
    train = _pair_tensors(model, pairs.filter(pa.compute.invert(is_val)), row_of)
    val = _pair_tensors(model, pairs.filter(is_val), row_of)

    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr)
    progress = tqdm(range(rc.epochs), desc="reward/bt", unit="epoch")
    for _ in progress:
        model.train()
        for idx in minibatches(len(train[0]), rc.batch_size, generator):
            rows, chosen, rejected = (t[idx] for t in train)
            loss, _ = bradley_terry_loss(model(images[rows], chosen), model(images[rows], rejected))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        progress.set_postfix(val_acc=f"{pairwise_accuracy(model, images, *val):.3f}")

    metrics = {
        "reward/train_accuracy": pairwise_accuracy(model, images, *train),
        "reward/val_accuracy": pairwise_accuracy(model, images, *val),
        "reward/train_pairs": len(train[0]),
        "reward/val_pairs": len(val[0]),
    }
    with atomic_dir(paths.reward_model) as out:
        model.save_pretrained(out)
    write_json(paths.reward_model.parent / "metrics.json", metrics)
    print(f"reward: held-out pairwise accuracy {metrics['reward/val_accuracy']:.3f} on {len(val[0])} pairs")
    return metrics
