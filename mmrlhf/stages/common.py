"""Plumbing shared by the stages: run-directory layout, atomic outputs, seeding, batching."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


class RunPaths:
    """Where each stage reads and writes inside a run directory.

    The layout is part of the public surface (documented in the README), so stages can be
    re-run or resumed one at a time.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self.data = self.root / "data"
        self.presets = self.root / "presets"
        self.sft_policy = self.root / "sft" / "policy"
        self.pairs = self.root / "feedback" / "pairs.parquet"
        self.reward_model = self.root / "reward" / "model"
        self.rl_policy = self.root / "rl" / "policy"
        self.rl_metrics = self.root / "rl" / "metrics.jsonl"
        self.rl_consumed = self.root / "rl" / "consumed.jsonl"  # (step, prompt, sample) of each row
        self.rl_checkpoints = self.root / "rl" / "checkpoints"
        self.retrieve = self.root / "retrieve" / "results.jsonl"  # the latest `mmrlhf retrieve`

    def split(self, name: str) -> Path:
        """The Parquet file of one data split (``sft``, ``feedback``, ``val``, ``test``)."""
        return self.data / f"{name}.parquet"

    def eval_dir(self, label: str) -> Path:
        """Where ``mmrlhf eval`` writes the metrics and review samples of one policy."""
        return self.root / "eval" / label


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``final`` only if the block succeeds.

    A crash or exception inside the block removes the temporary folder, so a half-written
    model or dataset is never left at ``final`` (the previous one, if any, stays).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index tensors covering ``range(n)`` in batches; shuffled when ``generator`` is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def policy_path(cfg, label: str) -> Path:
    """The policy a stage should load: ``init`` (the configured preset or checkpoint),
    ``sft``, ``rl``, or any other path / hub name passed through.

    A preset on a user's data gets a tokenizer trained on the data's prompts and references
    (:func:`mmrlhf.stages.data.data_corpus`, which builds the splits if they are missing).

    Raises:
        FileNotFoundError: ``sft``/``rl`` asked for before that stage has run, or a local path
            (starting with ``/``, ``.`` or ``~``, or with more slashes than a hub id) that does not exist.
    """
    from mmrlhf.models.presets import resolve_policy

    paths = RunPaths(cfg.run_dir)
    if label == "init":
        if cfg.data.source == "digits":  # the digits task's words are in the presets' own corpus
            return Path(resolve_policy(cfg.model.policy, paths.presets))
        from mmrlhf.stages.data import data_corpus

        return Path(resolve_policy(cfg.model.policy, paths.presets, corpus=data_corpus(cfg)))
    trained = {"sft": (paths.sft_policy, "mmrlhf sft"), "rl": (paths.rl_policy, "mmrlhf rl")}
    if label in trained:
        path, command = trained[label]
        if not path.exists():
            raise FileNotFoundError(f"no {label} policy at {path}: run `{command}` first")
        return path
    local = label.startswith(("/", ".", "~")) or label.count("/") > 1  # hub ids are "name" or "owner/name"
    if local and not Path(label).expanduser().exists():
        raise FileNotFoundError(f"no policy folder at {label} (a local path; hub ids look like owner/name)")
    return Path(label).expanduser() if local else Path(label)
