"""RLHF vs baselines of equal effort on the digits default, over several seeds.

Per seed, on the held-out test split (greedy decoding unless said otherwise):
- **SFT**: the supervised policy (`mmrlhf train`'s baseline);
- **SFT-longer**: the SFT policy trained on its labeled records for as long again as the RL
  stage took (same wall seconds, same machine, SFT's own recipe: AdamW, warmup, cosine);
- **best-of-n**: n = ``rl.samples_per_prompt`` SFT samples at ``rl.temperature``, the one the
  learned reward model scores highest;
- **RLHF**: the default RL stage, rewarded by the learned reward model (simulated preferences);
- **RL-gold**: the same RL stage rewarded by the verifiable gold score instead (the ceiling of
  the reward model's errors);
- **pass@k** of the SFT policy's samples (Chen et al. 2021's unbiased estimator).

Standard errors come from the product-weight bootstrap over scans (`mmrlhf.stats`), since the
500 test images are composed from a few hundred scans; gains are paired (the same draws). It is
conservative here (each image multiplies 3–5 scan weights), so the binomial error, which
treats images as independent and is too small, is printed beside it.
Prints per-seed tables, the mean ± sample std over seeds of every gain, the machine, and writes
``<root>/rl_gain.json``.

    python benchmarks/rl_gain.py --seeds 0 1 2 [--config jobs/digits.yaml] [--root runs/bench] [key=value ...]

About 20 minutes per seed on a 2-core CPU (one default `mmrlhf train`, a second RL stage and
the SFT-longer run of the same length).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mmrlhf.config import RewardSourceConfig, RunConfig, load_config
from mmrlhf.data.digits import exact_match
from mmrlhf.models.policy import encode_prompts, generate, load_policy
from mmrlhf.reward.scorer import RewardScorer
from mmrlhf.stages.common import RunPaths, atomic_dir, minibatches, seed_everything
from mmrlhf.stages.data import decode_images, load_split
from mmrlhf.stages.eval import eval_responses
from mmrlhf.stages.rl import run_rl
from mmrlhf.stages.sft import fit, sft_examples, sft_loss
from mmrlhf.stages.train import run_train
from mmrlhf.stats import bootstrap_se

GOLD = "mmrlhf.data.digits:gold_reward"


def stage_seconds(run_dir: str, stage: str) -> float:
    """Wall seconds of the last finished ``stage`` in ``<run_dir>/stages.jsonl``."""
    lines = [json.loads(line) for line in (Path(run_dir) / "stages.jsonl").read_text().splitlines()]
    return [line["seconds"] for line in lines if line["stage"] == stage][-1]


def correct_greedy(policy: str | Path, cfg: RunConfig) -> np.ndarray:
    """(N,) bool: greedy exact match of ``policy`` on each test image."""
    model, processor = load_policy(str(policy))
    model.eval()
    table = load_split(cfg, cfg.eval.split)
    texts = eval_responses(model, processor, decode_images(table, cfg.data.media),
                           table.column("prompt").to_pylist(), cfg.eval.batch_size, cfg.eval.max_new_tokens)
    return np.array([exact_match(t, r) for t, r in zip(texts, table.column("reference").to_pylist())])


@torch.no_grad()
def sampled(cfg: RunConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(correct (N, n) bool, reward-model scores (N, n)) of n SFT samples per test image at ``rl.temperature``."""
    paths = RunPaths(cfg.run_dir)
    model, processor = load_policy(str(paths.sft_policy))
    model.eval()
    table = load_split(cfg, cfg.eval.split)
    images = decode_images(table, cfg.data.media)
    references = table.column("reference").to_pylist()
    scorer = RewardScorer.from_pretrained(paths.reward_model)
    generator = torch.Generator().manual_seed(cfg.seed)
    correct, scores = np.zeros((len(images), n), bool), np.zeros((len(images), n))
    batch = encode_prompts(processor, images, table.column("prompt").to_pylist())
    for s in range(n):
        texts = generate(model, processor, batch, cfg.eval.max_new_tokens, temperature=cfg.rl.temperature,
                         generator=generator).texts
        correct[:, s] = [exact_match(t, r) for t, r in zip(texts, references)]
        scores[:, s] = scorer.score(images, texts)
    return correct, scores


def pass_at_k(correct: np.ndarray, k: int) -> np.ndarray:
    """(N,) chance that at least one of k of a row's n samples is correct (Chen et al. 2021, eq. 1)."""
    n, c = correct.shape[1], correct.sum(1)
    return np.array([1.0 - np.prod(1.0 - k / np.arange(n - ci + 1, n + 1)) if n - ci >= k else 1.0 for ci in c])


def sft_longer(cfg: RunConfig, seconds: float) -> Path:
    """The SFT policy trained on the labeled records for about ``seconds`` more (SFT's recipe, with
    as many epochs as fit the budget at the step rate measured first); saved under ``sft_longer/``
    and reused from there by a later run of the script."""
    paths = RunPaths(cfg.run_dir)
    out = paths.root / "sft_longer" / "policy"
    if out.exists():  # made by an earlier run of this script on the same run directory
        return out
    model, processor = load_policy(str(paths.sft_policy))
    examples = sft_examples(cfg, processor)
    generator = seed_everything(cfg.seed + 1)
    model.train()
    start, steps = time.perf_counter(), 0
    for idx in minibatches(len(examples), cfg.sft.batch_size, generator):  # time steps of the same size
        sft_loss(model, *examples.batch(idx)).backward()
        steps += 1
        if steps == 20:
            break
    per_epoch = (time.perf_counter() - start) / steps * -(-len(examples) // cfg.sft.batch_size)
    model, _ = load_policy(str(paths.sft_policy))  # the timing steps' gradients are thrown away
    epochs = max(1, round(seconds / per_epoch))
    fit(model, examples, cfg.sft, generator, epochs)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def gold_rl(cfg: RunConfig) -> Path:
    """The RL stage again, from the same SFT policy, rewarded by the gold score alone."""
    run_dir = Path(f"{cfg.run_dir}-gold")
    if not (run_dir / "rl" / "policy").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(cfg.run_dir, run_dir, ignore=shutil.ignore_patterns("rl", "eval", "sft_longer", "tensorboard"))
        gold = dataclasses.replace(cfg, run_dir=str(run_dir),
                                   reward=dataclasses.replace(cfg.reward, sources=[RewardSourceConfig(GOLD, 1.0)]))
        run_rl(gold)
    return run_dir / "rl" / "policy"


def one_seed(cfg: RunConfig) -> dict:
    """Every baseline of one seed: per-image exact match (N, K), the column names, and timings."""
    start = time.perf_counter()
    run_train(cfg)
    paths = RunPaths(cfg.run_dir)
    rl_seconds = stage_seconds(cfg.run_dir, "rl")
    n = cfg.rl.samples_per_prompt
    correct, scores = sampled(cfg, max(n, 16))
    columns = {
        "SFT": correct_greedy(paths.sft_policy, cfg),
        "SFT-longer": correct_greedy(sft_longer(cfg, rl_seconds), cfg),
        f"best-of-{n}": correct[np.arange(len(correct)), scores[:, :n].argmax(1)],
        "RLHF": correct_greedy(paths.rl_policy, cfg),
        "RL-gold": correct_greedy(gold_rl(cfg), cfg),
        f"pass@{n}": pass_at_k(correct[:, :n], n),
        "pass@16": pass_at_k(correct[:, :16], 16),
    }
    scans = load_split(cfg, cfg.eval.split).column("scan_ids").to_pylist()
    return {"columns": columns, "scans": scans, "rl_seconds": rl_seconds, "minutes": (time.perf_counter() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=None)
    parser.add_argument("--root", default="runs/bench", help="parent folder of the per-seed run directories")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    results = {}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"data.seed={seed}",
                                        f"run_dir={args.root}/seed{seed}"])
        results[seed] = one_seed(cfg)

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    names = list(next(iter(results.values()))["columns"])
    gains: dict[str, list[float]] = {name: [] for name in names}
    summary = {}
    for seed, r in results.items():
        table = np.stack([r["columns"][k].astype(float) for k in names], 1) * 100  # (N, K) percent
        se = bootstrap_se(table, r["scans"], seed=seed)
        se_gain = bootstrap_se(table - table[:, :1], r["scans"], seed=seed)
        binomial = table.std(axis=0, ddof=1) / np.sqrt(len(table))  # as if the images were independent
        print(f"\nseed {seed}: {r['minutes']:.1f} min in all, RL stage {r['rl_seconds']:.0f} s; exact match (%) "
              f"± bootstrap SE over scans [binomial SE]; gain over SFT ± its paired bootstrap SE")
        for k, name in enumerate(names):
            gains[name].append(float(table[:, k].mean() - table[:, 0].mean()))
            print(f"  {name:>12} {table[:, k].mean():5.1f} ± {se[k]:.1f} [{binomial[k]:.1f}]   "
                  f"{gains[name][-1]:+5.1f} ± {se_gain[k]:.1f}")
        summary[seed] = {name: {"exact_match": float(table[:, k].mean()), "se": float(se[k]),
                                "gain": gains[name][-1], "gain_se": float(se_gain[k])} for k, name in enumerate(names)}
    print(f"\nmean ± std over seeds {list(results)} of the exact-match gain over SFT (points):")
    for name in names[1:]:
        spread = statistics.stdev(gains[name]) if len(gains[name]) > 1 else 0.0
        print(f"  {name:>12} {statistics.mean(gains[name]):+5.1f} ± {spread:.1f}   per seed "
              + " ".join(f"{g:+.1f}" for g in gains[name]))
    rl, rl_minus = np.array(gains["RLHF"]), {k: np.array(gains["RLHF"]) - np.array(v) for k, v in gains.items()}
    print(f"  RLHF - SFT-longer {rl_minus['SFT-longer'].mean():+.1f}; RLHF - best-of-n "
          f"{rl_minus[names[2]].mean():+.1f}; RLHF above SFT on every seed: {bool((rl > 0).all())}")
    Path(args.root).mkdir(parents=True, exist_ok=True)
    (Path(args.root) / "rl_gain.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
