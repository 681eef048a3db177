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

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmrlhf.algorithms.preference import bradley_terry_loss
from mmrlhf.config import RunConfig
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table
from mmrlhf.models.presets import resolve_reward
from mmrlhf.models.reward import RewardModel
from mmrlhf.metrics import log_to_tensorboard
from mmrlhf.stages.common import RunPaths, atomic_dir, minibatches, seed_everything, write_json
from mmrlhf.stages.lineage import (FEEDBACK_SIMULATE, REWARD, check_current, check_no_dependents, lineage_of,
                                   stage_input, write_lineage)
from mmrlhf.stages.data import decode_images, load_split
from mmrlhf.stats import SMALL_SAMPLE, interval_keys, small_sample_warning, wilson_interval


def initial_reward_model(cfg: RunConfig) -> RewardModel:
    """The untrained reward model: a preset folder, a saved reward model, or an open_clip name + tag."""
    source = resolve_reward(cfg.model.reward, RunPaths(cfg.run_dir).presets)
    if (Path(source) / "config.json").is_file():
        return RewardModel.from_pretrained(source)
    return RewardModel(source, pretrained=cfg.model.reward_pretrained)


def hard_negative(reference: str, vocabulary: list[str], rng: np.random.Generator) -> str:
    """The reference with one word-level edit: substitute, delete, insert or swap neighbours.

    vocabulary: the words an edit may bring in (the references' own words). The edit always
    changes the text (a substitution draws from the other words), so the result is a wrong
    answer one step from the right one, the kind a nearly-trained policy gives.
    """
    words = reference.split()
    edit = rng.integers(4) if len(words) > 1 else rng.choice([0, 2])
    i = int(rng.integers(len(words)))
    if edit == 0:
        words[i] = rng.choice([w for w in vocabulary if w != words[i]])
    elif edit == 1:
        del words[i]
    elif edit == 2:
        words.insert(int(rng.integers(len(words) + 1)), rng.choice(vocabulary))
    elif words[i] != words[(i + 1) % len(words)]:
        j = (i + 1) % len(words)
        words[i], words[j] = words[j], words[i]
    else:
        words[i] = rng.choice([w for w in vocabulary if w != words[i]])
    return " ".join(words)


def random_shift(images: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``(B, C, S, S)`` moved by up to ``max_px`` pixels each way; the border fills with its corner value.

    The digits renderer already places rows at random offsets, so shifted copies stay in distribution.
    Videos' sampled frames ``(B, K, C, S, S)`` move alike within each video.
    """
    if max_px == 0:
        return images
    if images.ndim == 5:
        return random_shift(images.flatten(1, 2), max_px, generator).unflatten(1, images.shape[1:3])
    pad = F.pad(images, (max_px,) * 4, mode="replicate")  # (B, C, S + 2m, S + 2m)
    dx, dy = torch.randint(0, 2 * max_px + 1, (2, len(images)), generator=generator).tolist()
    size = images.shape[-1]
    return torch.stack([p[:, y:y + size, x:x + size] for p, x, y in zip(pad, dx, dy)])


def contrastive_warm_start(model: RewardModel, images: torch.Tensor, references: list[str], epochs: int,
                           batch_size: int, lr: float, n_hard: int, shift_px: int, generator: torch.Generator,
                           rng: np.random.Generator) -> None:
    """CLIP training of ``model.clip`` on matched (image, reference) rows, with hard negatives.

    images ``(N, 3, S, S)``, moved by up to ``shift_px`` (`random_shift`); references: N texts.
    Each image scores ``scale * cos`` against every reference of its batch and ``n_hard``
    one-edit corruptions of each (`hard_negative`), redrawn every epoch: cross-entropy over those ``B * (1 + n_hard)`` texts, averaged with the
    text-to-image direction over the references (symmetric InfoNCE, Radford et al. 2021; hard
    negatives as in NegCLIP, Yuksekgonul et al. 2023).
    """
    vocabulary = sorted({w for r in references for w in r.split()})
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr, foreach=True)  # the CPU default loops, ~100x slower
    model.train()
    for _ in tqdm(range(epochs), desc="reward/clip", unit="epoch"):
        for idx in minibatches(len(references), batch_size, generator):
            refs = [references[i] for i in idx.tolist()]
            texts = refs + [hard_negative(r, vocabulary, rng) for r in refs for _ in range(n_hard)]
            pixels = random_shift(images[idx], shift_px, generator)  # (B, 3, S, S)
            image_emb = model.encode_image(pixels)  # (B, E)
            text_emb = model.clip.encode_text(model.tokenize(texts), normalize=True)  # (B * (1 + n_hard), E)
            logits = model.clip.logit_scale.exp() * image_emb @ text_emb.T  # (B, B * (1 + n_hard))
            target = torch.arange(len(idx))
            # ALGO: image -> text over references and hard negatives; text -> image over the references
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :len(idx)].T, target)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _pair_tensors(model: RewardModel, pairs: pa.Table, row_of: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """(image rows (P,), chosen tokens (P, L), rejected tokens (P, L)), sorted by image row."""
    rows = torch.tensor([row_of[p] for p in pairs.column("prompt_id").to_pylist()])
    order = torch.argsort(rows, stable=True)
    chosen = model.tokenize(pairs.column("chosen").to_pylist())
    rejected = model.tokenize(pairs.column("rejected").to_pylist())
    return rows[order], chosen[order], rejected[order]


def _pair_scores(model: RewardModel, images: torch.Tensor, rows, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (P,) of chosen and rejected; each distinct image of ``rows`` is encoded once."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    image_emb = model.encode_image(images[unique])[inverse]  # (P, E)
    text_emb = model.clip.encode_text(torch.cat([chosen, rejected]), normalize=True)  # (2P, E)
    scores = model.score_embeddings(image_emb.repeat(2, 1), text_emb)  # (2P,)
    return scores[:len(rows)], scores[len(rows):]


def _prompt_batches(rows: torch.Tensor, prompts_per_batch: int, generator: torch.Generator):
    """Pair-index batches holding every pair of ``prompts_per_batch`` random prompts; ``rows`` sorted."""
    unique, counts = torch.unique_consecutive(rows, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    for idx in minibatches(len(unique), prompts_per_batch, generator):
        yield torch.cat([torch.arange(starts[i], starts[i] + counts[i]) for i in idx.tolist()])


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, images: torch.Tensor, rows, chosen, rejected) -> float:
    """Share of pairs where ``r(chosen) > r(rejected)``; ``rows`` index ``images`` ``(N, 3, S, S)``."""
    model.eval()
    chosen_scores, rejected_scores = _pair_scores(model, images, rows, chosen, rejected)
    return float((chosen_scores > rejected_scores).float().mean())


def run_reward_training(cfg: RunConfig, force: bool = False, append: bool = False) -> dict[str, float]:
    """Train and save the reward model; returns ``{"reward/val_accuracy", "reward/train_accuracy",
    "reward/train_pairs", "reward/val_pairs", "reward/version"}`` (accuracies 0–1), plus the Wilson
    interval of the held-out accuracy (``reward/val_accuracy_low`` / ``_high``) when it rests on
    fewer than :data:`mmrlhf.stats.SMALL_SAMPLE` pairs.

    Writes ``reward/lineage.json`` (:mod:`mmrlhf.stages.lineage`); ``force`` skips its checks.
    ``append``: the reward-model refresh during RL (issue 17): continue from the current
    ``reward/model`` (no CLIP warm start) on the pairs now in the feedback file, new ones
    appended by ``feedback import --append`` included, and count ``reward/version`` up by one.
    Outputs made from the old model (an RL stage) are allowed: a running RL stage takes the
    new weights in place (:func:`mmrlhf.stages.rl.swap_reward_weights`) and records the version
    on every row scored after the swap.

    Raises:
        FileNotFoundError: no preference pairs yet (run ``mmrlhf feedback simulate`` or ``import``).
        ValueError: a pair names a prompt id missing from the feedback split.
        StaleOutputError: the splits or the pairs are stale, or outputs made from ``reward/`` exist.
    """
    rc = cfg.reward
    generator = seed_everything(cfg.seed + 2)
    paths = RunPaths(cfg.run_dir)
    if not paths.pairs.exists():
        raise FileNotFoundError(f"no preference pairs at {paths.pairs}: run `mmrlhf feedback simulate` "
                                "or `mmrlhf feedback import` first")
    check_current(cfg, FEEDBACK_SIMULATE.folder, force)  # and the splits the pairs were made on
    record = lineage_of(cfg, REWARD, [stage_input(cfg, FEEDBACK_SIMULATE), paths.split("feedback"), paths.split("sft")])
    if append and not (paths.reward_model / "config.json").is_file():
        raise FileNotFoundError(f"reward train --append: no trained reward model at {paths.reward_model} to "
                                "continue from; run `mmrlhf reward train` first")
    previous = reward_model_version(cfg) if append else None
    check_no_dependents(cfg, record, REWARD.folder, force or append)
    pairs = read_table(paths.pairs, PREFERENCE_SCHEMA)
    feedback = load_split(cfg, "feedback")
    prompt_ids = sorted(set(pairs.column("prompt_id").to_pylist()))
    known = set(feedback.column("id").to_pylist())
    unknown = [p for p in prompt_ids if p not in known]
    if unknown:
        raise ValueError(f"reward: pair prompt_id {unknown[0]!r} is not in the feedback split ({len(unknown)} unknown)")
    feedback = feedback.filter(pa.compute.is_in(feedback.column("id"), pa.array(prompt_ids)))
    row_of = {rid: i for i, rid in enumerate(feedback.column("id").to_pylist())}

    model = RewardModel.from_pretrained(paths.reward_model) if append else initial_reward_model(cfg)
    images = model.preprocess(decode_images(feedback, cfg.data.media))
    if rc.clip_epochs and not append:
        sft = load_split(cfg, "sft")
        contrastive_warm_start(model, model.preprocess(decode_images(sft, cfg.data.media)),
                               sft.column("reference").to_pylist(), rc.clip_epochs, rc.batch_size, rc.clip_lr,
                               rc.hard_negatives, rc.clip_shift_px, generator, np.random.default_rng(cfg.seed + 2))

    held_out = set(np.random.default_rng(cfg.seed).permutation(prompt_ids)[: max(1, int(rc.val_fraction * len(prompt_ids)))])
    is_val = pa.array([p in held_out for p in pairs.column("prompt_id").to_pylist()])
    train = _pair_tensors(model, pairs.filter(pa.compute.invert(is_val)), row_of)
    val = _pair_tensors(model, pairs.filter(is_val), row_of)

    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, foreach=True)
    progress = tqdm(range(rc.epochs), desc="reward/bt", unit="epoch")
    for _ in progress:
        model.train()
        for idx in _prompt_batches(train[0], rc.batch_size, generator):
            loss, _ = bradley_terry_loss(*_pair_scores(model, images, *(t[idx] for t in train)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        progress.set_postfix(val_acc=f"{pairwise_accuracy(model, images, *val):.3f}")

    metrics = {
        "reward/train_accuracy": pairwise_accuracy(model, images, *train),
        "reward/val_accuracy": pairwise_accuracy(model, images, *val),
        "reward/train_pairs": len(train[0]),
        "reward/val_pairs": len(val[0]),
        "reward/version": 0 if previous is None else previous + 1,
    }
    if 0 < len(val[0]) < SMALL_SAMPLE:
        hits = round(metrics["reward/val_accuracy"] * len(val[0]))
        metrics |= interval_keys("reward/val_accuracy", wilson_interval(hits, len(val[0])))
    with atomic_dir(paths.reward_model) as out:
        model.save_pretrained(out)
    write_json(paths.reward_model.parent / "metrics.json", metrics)
    log_to_tensorboard(cfg.run_dir, [metrics])
    write_lineage(cfg, record, REWARD.folder)
    print(held_out_line(metrics))
    return metrics


def held_out_line(metrics: dict[str, float]) -> str:
    """The line printed after reward training: held-out accuracy, the pairs it rests on and, for
    fewer than :data:`mmrlhf.stats.SMALL_SAMPLE` pairs, its Wilson interval and a warning."""
    n = int(metrics["reward/val_pairs"])
    line = f"reward: held-out pairwise accuracy {metrics['reward/val_accuracy']:.3f} on {n} pairs"
    warning = small_sample_warning(n, "held-out pairs")
    if "reward/val_accuracy_low" in metrics:
        line += f" (95% interval {metrics['reward/val_accuracy_low']:.3f} to {metrics['reward/val_accuracy_high']:.3f})"
    if metrics.get("reward/version", 0):  # a model continued by --append
        line += f"; reward model version {metrics['reward/version']}"
    return line + (f"\n{warning}" if warning else "")


def reward_model_version(cfg: RunConfig) -> int:
    """The version of the run's saved reward model, from ``reward/metrics.json``: 0 for the first
    training (or a model saved before versions were counted, or none), +1 per ``--append``."""
    metrics_path = RunPaths(cfg.run_dir).reward_model.parent / "metrics.json"
    if not metrics_path.is_file():
        return 0
    return int(json.loads(metrics_path.read_text()).get("reward/version", 0))
