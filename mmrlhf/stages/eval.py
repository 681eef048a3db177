"""Stage 6, eval: held-out exact match, BLEU, ROUGE-L, CIDEr, reward-model score, gold score and
the reward model's cross-modal retrieval recall@K (:mod:`mmrlhf.stages.retrieve`).

The text metrics use every reference of a record (:mod:`mmrlhf.stages.text_metrics`); the
gold score comes from ``mmrlhf.data.digits``, only for the digits task
(:attr:`mmrlhf.config.DataConfig.has_gold_score`).
Greedy decoding unless ``eval.do_sample`` (then seeded sampling at the eval's settings). Writes ``metrics.json`` and the samples for human review as Parquet and CSV,
their images and an HTML page (:mod:`mmrlhf.stages.review`); metrics and samples also go to
TensorBoard under ``eval/<label>/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from mmrlhf.config import RunConfig
from mmrlhf.data.digits import gold_score
from mmrlhf.data.schema import record_references
from mmrlhf.metrics import log_to_tensorboard
from mmrlhf.models.policy import encode_prompts, generate, load_policy
from mmrlhf.models.sampling import Sampling, resolve_sampling
from mmrlhf.reward.scorer import RewardScorer
from mmrlhf.stages.common import RunPaths, atomic_dir, policy_path, write_json
from mmrlhf.stages.fit import warn_truncation
from mmrlhf.stages.lineage import LINEAGE_FILE, check_current, eval_stage, lineage_of
from mmrlhf.stages.data import decode_images, load_split, prepare_data
from mmrlhf.stages.retrieve import embed_split, retrieval_metrics
from mmrlhf.stages.review import image_paths, write_review
from mmrlhf.stages.text_metrics import text_metrics
from mmrlhf.stats import SMALL_SAMPLE, interval_keys, mean_interval, small_sample_warning


def eval_sampling(cfg: RunConfig, model) -> Sampling | None:
    """The eval's sampling settings (:class:`mmrlhf.config.EvalConfig`): None for greedy decoding,
    else ``eval.temperature``/``top_p``/``top_k`` over the checkpoint's ``generation_config``."""
    ev = cfg.eval
    return resolve_sampling(model.generation_config, ev.temperature, ev.top_p, ev.top_k) if ev.do_sample else None


@torch.no_grad()
def eval_responses(model, processor, images: list[np.ndarray], prompts: list[str], batch_size: int,
                   max_new_tokens: int, sampling: Sampling | None = None, seed: int = 0) -> list[str]:
    """One response of ``model`` for each (image, prompt), in batches of ``batch_size``: greedy
    when ``sampling`` is None, else sampled with it from a generator seeded with ``seed`` (the same
    responses on every call)."""
    texts: list[str] = []
    generator = torch.Generator(model.device).manual_seed(seed)
    options = {"do_sample": False} if sampling is None else {"generator": generator, **sampling.kwargs()}
    for start in tqdm(range(0, len(prompts), batch_size), desc="eval", unit="batch"):
        batch = encode_prompts(processor, images[start:start + batch_size], prompts[start:start + batch_size])
        texts += generate(model, processor, batch, max_new_tokens, **options).texts
    return texts


def run_eval(cfg: RunConfig, policy: str = "sft", force: bool = False) -> dict[str, float]:
    """Evaluate a policy (``sft``, ``rl``, ``init`` or a path) on ``cfg.eval.split``.

    Writes ``<run_dir>/eval/<label>/{metrics.json,samples.parquet,samples.csv,lineage.json}`` and returns
    the metrics: ``exact_match``, ``bleu``, ``rouge_l`` (percent), ``cider``, ``gold`` (mean gold score,
    0–1, digits task only), ``reward`` (mean reward-model score, when a reward model was trained),
    ``t2i_recall@{1,5,10}`` / ``i2t_recall@{1,5,10}`` (0–1, the reward model's joint embedding
    retrieving the split's images from its texts and back, :func:`retrieval_metrics`; the
    policy plays no part, and they need a trained reward model and references),
    ``n`` (examples); under :data:`mmrlhf.stats.SMALL_SAMPLE` examples each also has its 95%
    interval as ``<name>_low`` / ``<name>_high``.

    Raises:
        FileNotFoundError: the policy to evaluate has not been trained yet.
        StaleOutputError: the split, the policy or the reward model no longer match what made
            them (names the one to re-make and its command), unless ``force``.
    """
    path = policy_path(cfg, policy)  # a missing policy is named before any data is built
    prepare_data(cfg, force=force)
    paths = RunPaths(cfg.run_dir)
    # the stage outputs it reads: the policy when trained here, the reward model when there is one
    made_here = [policy] * (policy in ("sft", "rl")) + ["reward"] * (paths.reward_model / "config.json").exists()
    for folder in made_here:
        check_current(cfg, folder, force)
    record = lineage_of(cfg, eval_stage(_label(policy)),
                        [paths.split(cfg.eval.split), *(paths.root / f / LINEAGE_FILE for f in made_here)])
    model, processor = load_policy(str(path))
    model.eval()
    table = load_split(cfg, cfg.eval.split)
    images = decode_images(table, cfg.data.media)
    prompts = table.column("prompt").to_pylist()
    references = table.column("reference").to_pylist()
    all_references = record_references(table)
    warn_truncation(processor.tokenizer, [ref for refs in all_references for ref in refs], cfg.eval.max_new_tokens,
                    "eval.max_new_tokens", f"the {cfg.eval.split} split's references")
    texts = eval_responses(model, processor, images, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                           eval_sampling(cfg, model), cfg.seed)

    metrics = text_metrics(texts, all_references)
    columns = {"id": table.column("id"), "prompt": prompts, "reference": references,
               "references": all_references, "response": texts}
    if cfg.data.has_gold_score:
        columns["gold"] = [gold_score(t, r) for t, r in zip(texts, references)]
        metrics["gold"] = float(np.mean(columns["gold"]))
    if (paths.reward_model / "config.json").exists():
        scorer = RewardScorer.from_pretrained(paths.reward_model)
        rewards = scorer.score(images, texts)
        metrics["reward"] = float(np.mean(rewards))
        columns["reward"] = rewards.tolist()
        metrics |= retrieval_metrics(embed_split(scorer, table.column("id").to_pylist(), images, all_references))
    if len(texts) < SMALL_SAMPLE:
        for name in ("gold", "reward"):
            if name in columns:
                metrics |= interval_keys(name, mean_interval(columns[name]))
    metrics["n"] = len(texts)

    n_review = min(cfg.eval.n_review, len(texts))
    samples = pa.table(columns).slice(0, n_review).append_column("image", pa.array(image_paths(n_review)))
    label = _label(policy)
    with atomic_dir(paths.eval_dir(label)) as out:
        pq.write_table(samples, out / "samples.parquet")
        pacsv.write_csv(_flat_references(samples), out / "samples.csv")
        write_review(out, samples.to_pylist(), table.column("image").to_pylist()[:n_review],
                     f"eval of {label} on the {cfg.eval.split} split")
        write_json(out / "metrics.json", metrics)
        write_json(out / LINEAGE_FILE, record)
    log_to_tensorboard(cfg.run_dir, [metrics], {f"eval/{label}/samples": _samples_markdown(samples)},
                       prefix=f"eval/{label}/")
    return metrics


def _label(policy: str) -> str:
    """The folder under ``eval/`` of a policy: ``sft``, ``rl``, ``init`` or a path's last part."""
    return policy if policy in ("sft", "rl", "init") else Path(policy).name


def _flat_references(samples: pa.Table) -> pa.Table:
    """``samples`` with its list column ``references`` joined by " | " (CSV holds no lists)."""
    joined = [" | ".join(refs or []) for refs in samples.column("references").to_pylist()]
    return samples.set_column(samples.schema.get_field_index("references"), "references", pa.array(joined))


def _samples_markdown(samples: pa.Table) -> str:
    """The review samples as a Markdown table for TensorBoard's text tab."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| id | prompt | reference | response |", "|---|---|---|---|"]
    lines += [f"| {cell(str(r['id']))} | {cell(r['prompt'])} | {cell(' / '.join(r['references'] or []))} | "
              f"{cell(r['response'])} |" for r in samples.to_pylist()]
    return "\n".join(lines)


def print_metrics(metrics: dict[str, float], split: str) -> None:
    """Print one evaluation's metrics as ``name value`` lines, each with its 95% interval when
    it has one, under a warning when they rest on few ``split`` examples."""
    warning = small_sample_warning(int(metrics["n"]), f"{split} examples")
    if warning:
        print(warning)
    for name, value in metrics.items():
        if name.endswith(("_low", "_high")):
            continue
        interval = (f"  [{metrics[f'{name}_low']:.3f}, {metrics[f'{name}_high']:.3f}] 95%"
                    if f"{name}_low" in metrics else "")
        print(f"{name:>20s} {value:10.3f}{interval}")
