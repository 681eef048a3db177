"""Stage 3, feedback, for people: the policy's samples as comparison tasks (``mmrlhf feedback sample``).

For ``feedback.n_prompts`` records of the feedback split a policy (the SFT policy by default)
draws ``feedback.samples_per_prompt`` responses at ``feedback.sample_temperature`` (and ``sample_top_p``/``sample_top_k``); the distinct
ones become tasks (:mod:`mmrlhf.feedback.tasks`) in ``<run_dir>/feedback/tasks/``, for the
labeling page (``mmrlhf feedback label``) or to fill in by hand and ``mmrlhf feedback import``.
Prompts left with fewer than two distinct responses are skipped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmrlhf.config import RunConfig
from mmrlhf.data.digits import gold_score
from mmrlhf.feedback.sampling import sample_distinct
from mmrlhf.feedback.tasks import TASK_KINDS, PromptSamples, task_rows, write_tasks
from mmrlhf.models.policy import load_policy
from mmrlhf.models.sampling import resolve_sampling
from mmrlhf.stages.common import RunPaths, policy_path, seed_everything
from mmrlhf.stages.data import decode_images, load_split, prepare_data


def default_tasks_dir(cfg: RunConfig) -> Path:
    """Where ``feedback sample`` writes and ``feedback label`` serves by default."""
    return RunPaths(cfg.run_dir).root / "feedback" / "tasks"


def run_feedback_sample(cfg: RunConfig, kind: str = "ranking", policy: str = "sft", out: str | Path | None = None,
                        gold_fraction: float = 0.1) -> Path:
    """Sample, deduplicate, write the tasks folder of ``kind``; returns its path.

    ``policy``: ``sft``, ``rl``, ``init`` or a checkpoint path (:func:`policy_path`).
    ``gold_fraction``: share of pairwise tasks that become gold items (digits task only, whose
    gold score gives the answer; :func:`mmrlhf.feedback.tasks.task_rows`).

    Raises:
        ValueError: unknown ``kind``, or no prompt got two distinct responses.
        FileNotFoundError: the policy has not been trained yet.
        FileExistsError: the tasks folder exists (it may hold answers).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    out = Path(out) if out is not None else default_tasks_dir(cfg)
    if out.exists():
        raise FileExistsError(f"{out} already exists (it may hold answers); pass another --out or remove it")
    fb = cfg.feedback
    path = policy_path(cfg, policy)  # a missing policy is named before any data is built
    prepare_data(cfg)
    generator = seed_everything(cfg.seed + 2)
    model, processor = load_policy(str(path))
    model.eval()
    table = load_split(cfg, "feedback").slice(0, fb.n_prompts)
    samples = sample_distinct(model, processor, decode_images(table, cfg.data.media),
                              table.column("prompt").to_pylist(), fb.samples_per_prompt, cfg.sft.max_new_tokens,
                              resolve_sampling(model.generation_config, fb.sample_temperature, fb.sample_top_p,
                                               fb.sample_top_k), generator)
    prompts = []
    for record, responses in zip(table.to_pylist(), samples):
        if len(responses) < 2:
            continue
        gold = [gold_score(t, record["reference"]) for t in responses] if cfg.data.has_gold_score else None
        prompts.append(PromptSamples(record["id"], record["prompt"], record["image"], responses, gold))
    if not prompts:
        raise ValueError(f"feedback sample: no prompt of {table.num_rows} got 2 distinct responses from {path}; "
                         "raise feedback.samples_per_prompt or feedback.sample_temperature")
    rows = task_rows(kind, prompts, np.random.default_rng(cfg.seed + 2), gold_fraction)
    write_tasks(out, kind, prompts, rows, {"policy": str(path), "samples_per_prompt": fb.samples_per_prompt,
                                           "skipped_prompts": table.num_rows - len(prompts)})
    print(f"feedback sample: {len(rows)} {kind} tasks over {len(prompts)} prompts "
          f"({table.num_rows - len(prompts)} skipped: fewer than 2 distinct responses) in {out}")
    return out
