"""Fit checks run before a stage starts anything: settings that cannot fit the data or the cluster.

Each names the config key to change. Plain functions over numbers, texts and resource dicts (no
Ray): the RL stage passes ``ray.cluster_resources()`` and ``ray.available_resources()``; and one
over a data split and the policy (:func:`check_split_fits_positions`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pyarrow as pa

from mmrlhf.config import RunConfig
from mmrlhf.data.media import MediaLimits
from mmrlhf.models.policy import check_positions_fit, encode_prompts, load_policy
from mmrlhf.stages.data import decode_images

log = logging.getLogger(__name__)


def actor_demand(cfg: RunConfig) -> list[tuple[str, dict[str, float]]]:
    """What the RL stage's actors ask Ray for: ``(how the config sets it, resources of all of them)``.

    One entry per actor kind: rollout workers (``rl.rollout_workers``), learner ranks
    (``rl.learner_ranks``) and reward replicas (``reward.min_replicas``, the ones Serve starts
    with), each times its ``resources.*_cpus`` / ``*_gpus`` and one unit of its custom
    ``resources.*_resource`` when set. Resources in Ray's units (CPU, GPU: logical counts).
    """
    r = cfg.resources
    kinds = [("rollout", "rl.rollout_workers", cfg.rl.rollout_workers),
             ("learner", "rl.learner_ranks", cfg.rl.learner_ranks),
             ("reward", "reward.min_replicas", cfg.reward.min_replicas)]
    out = []
    for kind, key, count in kinds:
        cpus, gpus, custom = (getattr(r, f"{kind}_{what}") for what in ("cpus", "gpus", "resource"))
        need = {"CPU": count * cpus, "GPU": count * gpus, **({custom: float(count)} if custom else {})}
        parts = [f"resources.{kind}_cpus={cpus:g}", *([f"resources.{kind}_gpus={gpus:g}"] if gpus else []),
                 *([f"resources.{kind}_resource={custom}"] if custom else [])]
        out.append((f"{key}={count} x {' + '.join(parts)}", need))
    return out


def total_demand(cfg: RunConfig) -> dict[str, float]:
    """The sum of :func:`actor_demand` per resource (zero amounts left out)."""
    total: dict[str, float] = {}
    for _, need in actor_demand(cfg):
        for name, amount in need.items():
            total[name] = total.get(name, 0.0) + amount
    return {name: amount for name, amount in total.items() if amount > 0}


def _short(demand: Mapping[str, float], offer: Mapping[str, float]) -> dict[str, float]:
    return {name: amount for name, amount in demand.items() if offer.get(name, 0.0) + 1e-9 < amount}


def check_cluster_fits(cfg: RunConfig, cluster: Mapping[str, float], available: Mapping[str, float]) -> None:
    """Refuse a cluster too small for the RL stage's actors; say so when they must wait for others'.

    cluster, available: Ray resource dicts (``ray.cluster_resources()``, ``ray.available_resources()``).
    Logs a warning naming the resources when the cluster has them but other work holds them now
    (the actors then wait for it to finish).

    Raises:
        ValueError: one line naming each missing resource (needed, offered), how the config asks
            for it, and what to change.
    """
    demand = total_demand(cfg)
    missing = _short(demand, cluster)
    if missing:
        what = ", ".join(f"{name} {amount:g} (the cluster has {cluster.get(name, 0.0):g})"
                         for name, amount in missing.items())
        asks = "; ".join(how for how, _ in actor_demand(cfg))
        raise ValueError(f"rl: the configured actors need {what}: {asks}. Lower those settings (e.g. "
                         "resources.rollout_cpus=0.25) or add nodes to the cluster")
    busy = _short(demand, available)
    if busy:
        log.warning("rl: waiting for %s held by other work on the cluster (`ray status` shows it)",
                    ", ".join(f"{name} {amount:g} (free now {available.get(name, 0.0):g})"
                              for name, amount in busy.items()))


def check_prompts_fit(key: str, per_step: int, split: str, n_records: int) -> None:
    """Refuse a per-step prompt count larger than the split it draws from.

    Raises:
        ValueError: naming ``key``, its value, the split and its size.
    """
    if per_step > n_records:
        raise ValueError(f"{key}={per_step} but the {split} split holds {n_records} prompts: set {key} "
                         f"to at most {n_records}, or add data")


def truncation_warning(token_counts: Sequence[int], max_new_tokens: int, key: str, what: str) -> str | None:
    """A warning when responses of these lengths would be cut at ``max_new_tokens``; None when none is.

    token_counts: tokens of each reference under the policy's tokenizer, eos included.
    Returns e.g. "sft.max_new_tokens=8 truncates 100% of the sft split's references (longest 16
    tokens with eos): set sft.max_new_tokens=16".
    """
    if not token_counts:
        return None
    cut = sum(n > max_new_tokens for n in token_counts)
    if not cut:
        return None
    longest = max(token_counts)
    return (f"{key}={max_new_tokens} truncates {100 * cut / len(token_counts):.0f}% of {what} "
            f"(longest {longest} tokens with eos): set {key}={longest}")


def reference_token_counts(tokenizer, references: Sequence[str]) -> list[int]:
    """Tokens of each reference under ``tokenizer`` (a Hugging Face tokenizer), plus one for eos."""
    if not references:
        return []
    return [len(ids) + 1 for ids in tokenizer(list(references), add_special_tokens=False)["input_ids"]]


def warn_truncation(tokenizer, references: Sequence[str], max_new_tokens: int, key: str, what: str) -> None:
    """Log :func:`truncation_warning` for ``references`` under ``tokenizer``, if there is one."""
    warning = truncation_warning(reference_token_counts(tokenizer, references), max_new_tokens, key, what)
    if warning:
        log.warning("warning: %s", warning)


def check_split_fits_positions(policy: str, table: pa.Table, media: MediaLimits, max_new_tokens: int, key: str,
                               batch_size: int = 256) -> None:
    """Refuse, before anything starts, a record of ``table`` whose image tokens + prompt tokens +
    ``max_new_tokens`` exceed the position limit of ``policy`` (a folder for ``load_policy``):
    each record's prompt is encoded as the rollout workers will (image tokens are never cut).

    Raises:
        ValueError: one line naming the record, its counts, ``key`` and the limit
            (:func:`mmrlhf.models.policy.check_positions_fit`).
        mmrlhf.data.media.ImageDecodeError: a stored image or video is unreadable (names the record).
    """
    model, processor = load_policy(policy)
    ids = table.column("id").to_pylist()
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size)
        batch = encode_prompts(processor, decode_images(chunk, media), chunk.column("prompt").to_pylist())
        check_positions_fit(model, batch, max_new_tokens, ids[start:start + batch_size], key)
