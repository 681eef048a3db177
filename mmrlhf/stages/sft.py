"""Stage 2, sft: supervised fine-tuning of the policy on the labeled records.

Maximum likelihood of the reference response given (image, prompt): the token mean of
``-log π(y_t | x, y_<t)`` over the response (eos included), AdamW with a linear warmup over
``warmup_ratio`` of the steps, then cosine decay to 0, and gradient-norm clipping at ``grad_clip``
(a transformer trained from scratch needs thousands of small steps, not hundreds).

A vision tower trained from scratch inside the VLM gets almost no signal through the language
model (measured here: the `small` preset could not fit even 16 single-digit images in 300
steps), so ``vision_warmup_epochs`` first train the vision tower and projector alone to predict
the bag of words of the reference (Joulin et al. 2016), the way LLaVA starts from a pretrained
vision encoder. The policy starts from
``model.policy`` (a preset or a checkpoint) and is saved with ``save_pretrained`` to
``<run_dir>/sft/policy`` (atomically: a failed run leaves no half-written model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mmrlhf.algorithms.masked import masked_mean
from mmrlhf.algorithms.pretrain import bag_of_words_loss
from mmrlhf.config import RunConfig, SFTConfig
from mmrlhf.data.schema import record_references
from mmrlhf.models.policy import (PromptBatch, encode_prompts, encode_responses, load_policy, pooled_image_features,
                                  response_logprobs, vision_parameters)
from mmrlhf.metrics import log_to_tensorboard
from mmrlhf.stages.common import RunPaths, atomic_dir, minibatches, policy_path, seed_everything, write_json
from mmrlhf.stages.fit import warn_truncation
from mmrlhf.stages.lineage import SFT, check_no_dependents, lineage_of, write_lineage
from mmrlhf.stages.data import decode_images, load_split, prepare_data


def sft_loss(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per response token (nats), averaged over ``response_mask``.

    ``response_ids``/``response_mask``: ``(B, R)``; returns a scalar.
    """
    logprobs, _, _ = response_logprobs(model, batch, response_ids, response_mask)
    return -masked_mean(logprobs, response_mask)


def vision_warmup(model, vision: dict[str, torch.Tensor], response_ids: torch.Tensor, response_mask: torch.Tensor,
                  epochs: int, batch_size: int, lr: float, generator: torch.Generator) -> float:
    """Train the vision tower and projector to predict each reference's bag of words.

    ``vision``: a `PromptBatch`'s images ``{name: (N, ...)}``; ``response_ids``/``response_mask``: ``(N, R)``. A
    temporary linear head reads the mean of the image tokens; it is thrown away afterwards.
    Returns the last epoch's mean loss (nats).
    """
    head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    params = [*vision_parameters(model), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses: list[float] = []
    progress = tqdm(range(epochs), desc="sft/vision-warmup", unit="epoch")
    for _ in progress:
        if losses:
            progress.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
        losses = []
        for idx in minibatches(len(response_ids), batch_size, generator):
            logits = head(pooled_image_features(model, {k: v[idx] for k, v in vision.items()}))  # (B, V)
            loss = bag_of_words_loss(logits, response_ids[idx], response_mask[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@dataclass
class SFTExamples:
    """Encoded (image, prompt, reference) examples: one per reference of each record."""

    prompts: PromptBatch              # (N, T) left-padded prompts and their images (N, ...)
    response_ids: torch.Tensor        # (N, R) reference tokens + eos, right-padded
    response_mask: torch.Tensor       # (N, R)

    def __len__(self) -> int:
        return len(self.response_ids)

    def batch(self, idx: torch.Tensor) -> tuple[PromptBatch, torch.Tensor, torch.Tensor]:
        """Rows ``idx`` as (prompts, response_ids, response_mask)."""
        return self.prompts.rows(idx), self.response_ids[idx], self.response_mask[idx]


def sft_examples(cfg: RunConfig, processor, split: str = "sft") -> SFTExamples:
    """The records of ``split`` as SFT examples, one per reference.

    Raises:
        ValueError: a record of the split has no reference (names the record).
    """
    table = load_split(cfg, split)
    per_record = record_references(table)
    missing = [rid for rid, refs in zip(table.column("id").to_pylist(), per_record) if not refs or not all(refs)]
    if missing:
        raise ValueError(f"sft: record {missing[0]} has no reference (field 'reference'), and {len(missing) - 1} more")
    # one example per (image, reference): an image with several captions teaches each of them
    table = table.take([row for row, refs in enumerate(per_record) for _ in refs])
    references = [ref for refs in per_record for ref in refs]
    if split == "sft":
        warn_truncation(processor.tokenizer, references, cfg.sft.max_new_tokens, "sft.max_new_tokens",
                        "the sft split's references")
    prompts = encode_prompts(processor, decode_images(table, cfg.data.media),
                             table.column("prompt").to_pylist())
    return SFTExamples(prompts, *encode_responses(processor, references, cfg.sft.max_new_tokens))


@torch.no_grad()
def mean_sft_loss(model, examples: SFTExamples, batch_size: int = 128) -> float:
    """Token-mean negative log-likelihood (nats) of ``examples`` under ``model`` (eval mode kept by caller)."""
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        prompts, ids, mask = examples.batch(torch.arange(start, min(start + batch_size, len(examples))))
        logprobs, _, _ = response_logprobs(model, prompts, ids, mask)
        total -= float((logprobs * mask).sum())
        tokens += float(mask.sum())
    return total / max(tokens, 1.0)


def fit(model, examples: SFTExamples, sft: SFTConfig, generator: torch.Generator, epochs: int,
        val: SFTExamples | None = None) -> list[dict[str, float]]:
    """``epochs`` of maximum likelihood on ``examples``: AdamW at ``sft.lr``, linear warmup over
    ``sft.warmup_ratio`` of the steps, cosine decay to 0, gradient clipping at ``sft.grad_clip``.

    Returns one dict per epoch: ``train_loss`` (mean over its steps) and, with ``val``,
    ``val_loss`` (nats per token, measured in eval mode after the epoch).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay)
    total_steps = epochs * math.ceil(len(examples) / sft.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(sft.warmup_ratio * total_steps), total_steps)
    history: list[dict[str, float]] = []
    progress = tqdm(range(epochs), desc="sft", unit="epoch")
    for _ in progress:
        model.train()
        losses = []
        for idx in minibatches(len(examples), sft.batch_size, generator):
            loss = sft_loss(model, *examples.batch(idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), sft.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        history.append({"train_loss": sum(losses) / len(losses)})
        if val is not None:
            model.eval()
            history[-1]["val_loss"] = mean_sft_loss(model, val)
        progress.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
    return history


def run_sft(cfg: RunConfig, force: bool = False) -> float:
    """Fine-tune the policy on the ``sft`` split; returns the last epoch's mean loss (nats/token).

    Each record gives one example per reference (:func:`mmrlhf.data.schema.record_references`).
    The loss on the ``val`` split after every epoch goes to ``sft/metrics.json`` with the
    training loss, so whether SFT has converged (validation loss no longer falling) can be read
    off. Writes ``sft/lineage.json`` (:mod:`mmrlhf.stages.lineage`); ``force`` skips its checks.

    Raises:
        ValueError: a record of the split has no reference (names the record).
        StaleOutputError: the splits are stale, or outputs made from ``sft/`` exist and the
            config or splits changed since it was made.
    """
    generator = seed_everything(cfg.seed)
    prepare_data(cfg, force=force)
    paths = RunPaths(cfg.run_dir)
    record = lineage_of(cfg, SFT, [paths.split("sft")])
    check_no_dependents(cfg, record, SFT.folder, force)
    model, processor = load_policy(str(policy_path(cfg, "init")))
    examples = sft_examples(cfg, processor)
    val = sft_examples(cfg, processor, "val") if all(record_references(load_split(cfg, "val"))) else None

    model.train()
    if cfg.sft.vision_warmup_epochs:
        # the eos token is in every bag alike, so it carries no signal about the image
        content = examples.response_mask * (examples.response_ids != processor.tokenizer.eos_token_id)
        vision_warmup(model, examples.prompts.vision, examples.response_ids, content,
                      cfg.sft.vision_warmup_epochs, cfg.sft.batch_size, cfg.sft.lr, generator)
    history = fit(model, examples, cfg.sft, generator, cfg.sft.epochs, val)
    with atomic_dir(paths.sft_policy) as out:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    write_json(paths.sft_policy.parent / "metrics.json", {"epochs": history})
    log_to_tensorboard(cfg.run_dir, history, prefix="sft/")  # sft/train_loss, sft/val_loss by epoch
    write_lineage(cfg, record, SFT.folder)
    return history[-1]["train_loss"]
