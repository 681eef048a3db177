"""Stage 6, eval, by people: blind A/B pairs of two policies on held-out prompts (``mmrlhf eval --human``).

The baseline (SFT by default) and the evaluated policy (RL by default) answer the first
``eval.n_review`` prompts of ``eval.split`` with the eval's decoding (:func:`mmrlhf.stages.eval.eval_responses`);
each prompt whose two responses differ becomes one pairwise task in
``<run_dir>/eval/human/tasks/``, whose ``origin_a`` / ``origin_b`` say which policy wrote what.
The labeling page never shows that and draws the sides per annotator, so the pairs are blind.
Prompts where both policies wrote the same text are counted (``identical``), not asked.
:func:`human_eval_report` turns the answers into the win rate with its Wilson interval and
Cohen's kappa (:mod:`mmrlhf.feedback.human_eval`), written to ``eval/human/metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmrlhf.config import RunConfig
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore, annotator_stats
from mmrlhf.feedback.human_eval import human_eval_metrics
from mmrlhf.feedback.tasks import PromptSamples, load_tasks, task_rows, write_tasks
from mmrlhf.models.policy import load_policy
from mmrlhf.stages.common import RunPaths, policy_path, write_json
from mmrlhf.stages.data import decode_images, load_split, prepare_data
from mmrlhf.stages.eval import eval_responses, eval_sampling


def human_eval_dir(cfg: RunConfig) -> Path:
    """``<run_dir>/eval/human``: the tasks folder and ``metrics.json`` of the human evaluation."""
    return RunPaths(cfg.run_dir).root / "eval" / "human"


def prepare_human_eval(cfg: RunConfig, policy: str = "rl", baseline: str = "sft") -> Path:
    """Write the blind pairs of ``baseline`` vs ``policy`` (module docstring); returns the tasks folder.

    Raises:
        FileNotFoundError: a policy has not been trained yet.
        FileExistsError: the tasks folder exists (it may hold answers).
        ValueError: ``policy`` equals ``baseline``, or the two wrote the same text on every prompt.
    """
    if policy == baseline:
        raise ValueError(f"eval --human: --policy and --baseline are both {policy!r}; compare two policies")
    out = human_eval_dir(cfg) / "tasks"
    if out.exists():
        raise FileExistsError(f"{out} already exists (it may hold answers); report it with `mmrlhf eval --human "
                              "--report`, or remove it")
    paths = {name: policy_path(cfg, name) for name in (baseline, policy)}  # missing policies named first
    prepare_data(cfg)
    table = load_split(cfg, cfg.eval.split).slice(0, cfg.eval.n_review)
    images = decode_images(table, cfg.data.media)
    prompts = table.column("prompt").to_pylist()
    texts = {}
    for name, path in paths.items():
        model, processor = load_policy(str(path))
        model.eval()
        texts[name] = eval_responses(model, processor, images, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                     eval_sampling(cfg, model), cfg.seed)
    samples = [PromptSamples(record["id"], record["prompt"], record["image"], [a, b], origins=[baseline, policy])
               for record, a, b in zip(table.to_pylist(), texts[baseline], texts[policy]) if a != b]
    identical = table.num_rows - len(samples)
    if not samples:
        raise ValueError(f"eval --human: {baseline} and {policy} wrote the same text on all {table.num_rows} "
                         f"prompts of {cfg.eval.split}; there is nothing for people to compare")
    rows = task_rows("pairwise", samples, np.random.default_rng(cfg.seed), gold_fraction=0.0)
    meta = {"policy": policy, "baseline": baseline, "split": cfg.eval.split, "identical": identical}
    write_tasks(out, "pairwise", samples, rows, meta)
    print(f"eval --human: {len(rows)} blind pairs of {baseline} vs {policy} on {cfg.eval.split} "
          f"({identical} prompts with identical responses left out) in {out}")
    return out


def human_eval_report(cfg: RunConfig) -> dict:
    """Win rate, interval, ties and kappa from the answers so far; writes and returns the metrics.

    Adds ``policy``, ``baseline``, ``identical`` and ``annotators``
    (:func:`mmrlhf.feedback.answers.annotator_stats`) to :func:`human_eval_metrics`'s keys.
    Raises FileNotFoundError when the pairs were never prepared.
    """
    tasks = load_tasks(human_eval_dir(cfg) / "tasks")
    answers = AnswerStore(tasks.root / ANSWERS_DIR).read()
    origins = {row["task_id"]: (row["origin_a"], row["origin_b"]) for row in tasks.rows}
    metrics = {"policy": tasks.meta["policy"], "baseline": tasks.meta["baseline"],
               "identical": tasks.meta["identical"],
               **human_eval_metrics(answers, origins, tasks.meta["policy"]), "annotators": annotator_stats(answers)}
    write_json(human_eval_dir(cfg) / "metrics.json", metrics)
    return metrics


def print_human_eval(metrics: dict) -> None:
    """Print the report as a few lines."""
    policy, baseline = metrics["policy"], metrics["baseline"]
    if metrics["win_rate"] is None:
        print(f"human eval: no decided judgement of {policy} vs {baseline} yet ({metrics['ties']} ties)")
    else:
        print(f"human eval: {policy} beats {baseline} in {metrics['win_rate']:.3f} of decided pairs "
              f"(95% Wilson interval {metrics['win_rate_low']:.3f}-{metrics['win_rate_high']:.3f}; "
              f"{metrics['wins']} wins, {metrics['losses']} losses, {metrics['ties']} ties, "
              f"{metrics['cant_judge']} can't judge, {metrics['identical']} identical pairs not asked)")
    kappa = metrics["kappa_mean"]
    print(f"inter-annotator agreement: Cohen's kappa {'n/a' if kappa is None else f'{kappa:.3f}'} "
          f"over {len(metrics['kappa'])} annotator pairs")
