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

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mmrlhf.algorithms.masked import masked_mean
from mmrlhf.algorithms.pretrain import bag_of_words_loss
from mmrlhf.config import RunConfig
from mmrlhf.data.schema import record_references
from mmrlhf.models.policy import (PromptBatch, encode_prompts, encode_responses, image_features, load_policy,
                                  response_logprobs)
from mmrlhf.stages.common import RunPaths, atomic_dir, minibatches, policy_path, seed_everything
from mmrlhf.stages.fit import warn_truncation
from mmrlhf.stages.lineage import SFT, check_no_dependents, lineage_of, write_lineage
from mmrlhf.stages.data import decode_images, load_split, prepare_data


def sft_loss(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per response token (nats), averaged over ``response_mask``.

    ``response_ids``/``response_mask``: ``(B, R)``; returns a scalar.
    """
    logprobs, _, _ = response_logprobs(model, batch, response_ids, response_mask)
    return -masked_mean(logprobs, response_mask)


def vision_warmup(model, pixel_values: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor,
                  epochs: int, batch_size: int, lr: float, generator: torch.Generator) -> float:
    """Train the vision tower and projector to predict each reference's bag of words.

    ``pixel_values``: ``(N, 3, H, W)``; ``response_ids``/``response_mask``: ``(N, R)``. A
    temporary linear head reads the mean of the image tokens; it is thrown away afterwards.
    Returns the last epoch's mean loss (nats).
    """
    head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses: list[float] = []
    progress = tqdm(range(epochs), desc="sft/vision-warmup", unit="epoch")
    for _ in progress:
        if losses:
            progress.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
        losses = []
        for idx in minibatches(len(response_ids), batch_size, generator):
            logits = head(image_features(model, pixel_values[idx]).mean(1))  # (B, V)
            loss = bag_of_words_loss(logits, response_ids[idx], response_mask[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


def run_sft(cfg: RunConfig, force: bool = False) -> float:
    """Fine-tune the policy on the ``sft`` split; returns the last epoch's mean loss (nats/token).

    Each record gives one example per reference (:func:`mmrlhf.data.schema.record_references`).
    Writes ``sft/lineage.json`` (:mod:`mmrlhf.stages.lineage`); ``force`` skips its checks.

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
    table = load_split(cfg, "sft")
    per_record = record_references(table)
    missing = [rid for rid, refs in zip(table.column("id").to_pylist(), per_record) if not refs or not all(refs)]
    if missing:
        raise ValueError(f"sft: record {missing[0]} has no reference (field 'reference'), and {len(missing) - 1} more")
    # one example per (image, reference): an image with several captions teaches each of them
    table = table.take([row for row, refs in enumerate(per_record) for _ in refs])
    references = [ref for refs in per_record for ref in refs]
    model, processor = load_policy(str(policy_path(cfg, "init")))
    warn_truncation(processor.tokenizer, references, cfg.sft.max_new_tokens, "sft.max_new_tokens",
                    "the sft split's references")
    prompts = encode_prompts(processor, decode_images(table, cfg.data.max_image_pixels),
                             table.column("prompt").to_pylist())
    response_ids, response_mask = encode_responses(processor, references, cfg.sft.max_new_tokens)

    model.train()
    if cfg.sft.vision_warmup_epochs:
        # the eos token is in every bag alike, so it carries no signal about the image
        content = response_mask * (response_ids != processor.tokenizer.eos_token_id)
        vision_warmup(model, prompts.pixel_values, response_ids, content, cfg.sft.vision_warmup_epochs,
                      cfg.sft.batch_size, cfg.sft.lr, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft.lr, weight_decay=cfg.sft.weight_decay)
    total_steps = cfg.sft.epochs * math.ceil(len(references) / cfg.sft.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.sft.warmup_ratio * total_steps), total_steps)
    progress = tqdm(range(cfg.sft.epochs), desc="sft", unit="epoch")
    for _ in progress:
        losses = []
        for idx in minibatches(len(references), cfg.sft.batch_size, generator):
            batch = PromptBatch(prompts.input_ids[idx], prompts.attention_mask[idx], prompts.pixel_values[idx])
            loss = sft_loss(model, batch, response_ids[idx], response_mask[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.sft.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        progress.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
    with atomic_dir(paths.sft_policy) as out:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    write_lineage(cfg, record, SFT.folder)
    return sum(losses) / len(losses)
