"""Greedy exact match vs pass@k of a policy's own samples: the ceiling of RL that re-ranks them.

An RL stage that learns only from the policy's samples can at best make the best of its k
samples the greedy answer, so pass@k bounds the exact-match gain of a short RL stage. Prints
greedy exact match, then per temperature the mean sample exact match and pass@k with the
unbiased estimator of Chen et al. 2021 (eq. 1) over ``--samples`` draws per image, side by
side, with the machine it ran on.

    python benchmarks/pass_at_k.py --run-dir runs/digits [--policy sft] [--images 256]
        [--samples 16] [--temperatures 1.0 1.5] [--config jobs/digits.yaml] [key=value ...]

Needs a run directory where ``mmrlhf sft`` (or ``mmrlhf rl`` for ``--policy rl``) has run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from mmrlhf.config import load_config
from mmrlhf.data.digits import exact_match
from mmrlhf.models.policy import encode_prompts, generate, load_policy
from mmrlhf.stages.common import policy_path
from mmrlhf.stages.data import decode_images, load_split


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """Mean over rows of ``1 - C(n - c, k) / C(n, k)``: the chance that at least one of k
    samples drawn without replacement from a row's n samples is correct (Chen et al. 2021).

    correct: (images, n) bool. Raises ValueError for k > n.
    """
    n = correct.shape[1]
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per image, got {n}")
    return float(np.mean([1.0 - math.comb(n - c, k) / math.comb(n, k) for c in correct.sum(1).tolist()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--policy", default="sft", help="sft, rl, init or a path")
    parser.add_argument("--images", type=int, default=256, help="first N images of the split")
    parser.add_argument("--samples", type=int, default=16, help="samples per image and temperature")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, [*args.overrides, f"run_dir={args.run_dir}"])
    model, processor = load_policy(str(policy_path(cfg, args.policy)))
    model.eval()
    table = load_split(cfg, cfg.eval.split).slice(0, args.images)
    images = decode_images(table, cfg.data.media)
    references = table.column("reference").to_pylist()
    batch = encode_prompts(processor, images, table.column("prompt").to_pylist())
    max_new = cfg.eval.max_new_tokens

    start = time.perf_counter()
    greedy = generate(model, processor, batch, max_new, do_sample=False).texts
    greedy_em = 100 * np.mean([exact_match(t, r) for t, r in zip(greedy, references)])
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for temperature in args.temperatures:
        correct = np.zeros((len(references), args.samples), dtype=bool)
        for s in range(args.samples):
            texts = generate(model, processor, batch, max_new, temperature=temperature, generator=generator).texts
            correct[:, s] = [exact_match(t, r) for t, r in zip(texts, references)]
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= args.samples]
        rows.append((temperature, 100 * correct.mean(), {k: 100 * pass_at_k(correct, k) for k in ks}))

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {time.perf_counter() - start:.0f} s")
    print(f"policy {args.policy} of {args.run_dir}, first {len(references)} images of split {cfg.eval.split!r}")
    print(f"greedy exact match: {greedy_em:.1f}%")
    for temperature, sample_em, passes in rows:
        cells = "  ".join(f"pass@{k} {v:5.1f}% ({v - greedy_em:+.1f})" for k, v in passes.items())
        print(f"temperature {temperature:g}: sample EM {sample_em:.1f}%  {cells}")


if __name__ == "__main__":
    main()
