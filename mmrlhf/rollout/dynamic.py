"""DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2): keep only prompts whose samples disagree.

A prompt whose samples all got the same score has zero advantage under every group baseline
(GRPO, RLOO, ...), so it spends a step's compute on no signal. Those groups are dropped and
more prompts are generated, up to a bounded number of tries, to refill the step. Plain Python
over :class:`mmrlhf.types.Rollout`; the caller passes a function that generates and scores the
next batch (the rollout workers through Ray, or anything else in tests).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from mmrlhf.algorithms.estimators import informative_groups
from mmrlhf.types import Rollout, prompt_index

logger = logging.getLogger(__name__)


def informative_rows(rollout: Rollout) -> Tensor:
    """(B,) bool: rows of prompts with at least two scored samples that scored differently."""
    return informative_groups(rollout.scores, prompt_index(rollout.prompt_ids))


def fill_informative(rollout: Rollout, more: Callable[[], Rollout], target_prompts: int, max_tries: int,
                     row_multiple: int, pad_token_id: int) -> tuple[Rollout | None, dict[str, float]]:
    """The informative groups of ``rollout``, refilled from ``more()`` up to ``target_prompts`` prompts.

    ``more()`` generates and scores another batch of prompts; it is called at most ``max_tries``
    times, and not at all once ``target_prompts`` informative prompts are held. Extra prompts
    beyond the target are dropped, and so are the last groups until the row count is a multiple
    of ``row_multiple`` (the learner ranks: every rank gets an equal shard).

    Returns (the kept rollout, or None when no informative group was found in any try, and
    metrics ``rollout/dynamic_tries``, ``rollout/dropped_prompts`` (all alike, or over the
    target), ``rollout/informative_prompts``). A None result is also logged as a warning: the
    caller skips the update rather than train on no signal or loop forever.
    """
    parts, prompts, dropped, tries = [], 0, 0, 0
    batch = rollout
    while True:
        rows = torch.nonzero(informative_rows(batch)).squeeze(-1)
        kept = len(set(batch.prompt_ids[i] for i in rows.tolist()))
        if kept:
            parts.append(batch.select(rows))
            prompts += kept
        dropped += len(set(batch.prompt_ids)) - kept
        if prompts >= target_prompts or tries >= max_tries:
            break
        tries += 1
        batch = more()
    metrics = {"rollout/dynamic_tries": float(tries)}
    if not parts:
        logger.warning("dynamic sampling: every prompt's samples scored alike in %d tries; the update is skipped",
                       tries + 1)
        return None, metrics | {"rollout/dropped_prompts": float(dropped), "rollout/informative_prompts": 0.0}
    joined = Rollout.concat(parts, pad_token_id)
    order = list(dict.fromkeys(joined.prompt_ids))  # prompts in arrival order
    sizes = {pid: joined.prompt_ids.count(pid) for pid in order}
    chosen = order[:target_prompts]
    while chosen and sum(sizes[p] for p in chosen) % row_multiple:
        chosen.pop()
    dropped += len(order) - len(chosen)
    if not chosen:
        logger.warning("dynamic sampling: no set of informative prompts fills a multiple of %d rows; "
                       "the update is skipped", row_multiple)
        return None, metrics | {"rollout/dropped_prompts": float(dropped), "rollout/informative_prompts": 0.0}
    wanted = set(chosen)
    rows = torch.tensor([i for i, pid in enumerate(joined.prompt_ids) if pid in wanted])
    return joined.select(rows), metrics | {"rollout/dropped_prompts": float(dropped),
                                           "rollout/informative_prompts": float(len(chosen))}
