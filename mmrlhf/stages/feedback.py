"""Stage 3, feedback: preference pairs over the SFT policy's samples from a simulated annotator.

For ``feedback.n_prompts`` records of the unlabeled feedback pool the SFT policy samples K
responses; :mod:`mmrlhf.feedback.simulated` compares them by gold score with Bradley–Terry
noise (Christiano et al. 2017). Pairs go to ``<run_dir>/feedback/pairs.parquet``; people's
judgements reach the same file through :mod:`mmrlhf.stages.feedback_import`, the only way for
data other than the digits task, which alone has a gold score.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from mmrlhf.config import ConfigError, RunConfig
from mmrlhf.data.digits import gold_score
from mmrlhf.data.schema import PREFERENCE_SCHEMA, write_table
from mmrlhf.feedback.simulated import simulate_preferences
from mmrlhf.models.policy import encode_prompts, generate, load_policy
from mmrlhf.models.sampling import resolve_sampling
from mmrlhf.stages.common import RunPaths, policy_path, seed_everything
from mmrlhf.stages.lineage import (FEEDBACK_SIMULATE, SFT, check_current, check_no_dependents, lineage_of,
                                   stage_input, write_lineage)
from mmrlhf.stages.data import decode_images, load_split, prepare_data

_PROMPTS_PER_BATCH = 16
NO_GOLD_SCORE = ("the simulated annotator needs the digits task's gold score (data.source=digits); for your own "
                 "data import human judgements with `mmrlhf feedback import FILE --kind pairwise|ranking|rating`")


@torch.no_grad()
def run_feedback_simulation(cfg: RunConfig, force: bool = False) -> int:
    """Sample, ask the simulated annotator, write the pairs; returns the number of pairs.

    Writes ``feedback/lineage.json`` (:mod:`mmrlhf.stages.lineage`); ``force`` skips its checks.

    Raises:
        ConfigError: the data has no gold score (not the digits task), before anything is loaded.
        FileNotFoundError: no SFT policy yet (run ``mmrlhf sft``).
        ValueError: the simulated annotator produced no pair (every sample tied).
        StaleOutputError: the splits or ``sft/`` are stale, or outputs made from ``feedback/`` exist.
    """
    if not cfg.data.has_gold_score:
        raise ConfigError(f"data.source={cfg.data.source}: {NO_GOLD_SCORE}")
    fb = cfg.feedback
    generator = seed_everything(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    sft = policy_path(cfg, "sft")  # a missing SFT policy is named before any data is built
    prepare_data(cfg, force=force)
    check_current(cfg, SFT.folder, force)
    paths = RunPaths(cfg.run_dir)
    record = lineage_of(cfg, FEEDBACK_SIMULATE, [paths.split("feedback"), stage_input(cfg, SFT)])
    check_no_dependents(cfg, record, FEEDBACK_SIMULATE.folder, force)
    model, processor = load_policy(str(sft))
    model.eval()
    sampling = resolve_sampling(model.generation_config, fb.sample_temperature, fb.sample_top_p, fb.sample_top_k)
    table = load_split(cfg, "feedback").slice(0, fb.n_prompts)
    images = decode_images(table, cfg.data.media)
    ids, prompts = table.column("id").to_pylist(), table.column("prompt").to_pylist()
    references = table.column("reference").to_pylist()

    pairs = []
    k = fb.samples_per_prompt
    for start in tqdm(range(0, len(ids), _PROMPTS_PER_BATCH), desc="feedback", unit="batch"):
        prompt_rows = range(start, min(start + _PROMPTS_PER_BATCH, len(ids)))
        rows = [i for i in prompt_rows for _ in range(k)]
        batch = encode_prompts(processor, [images[i] for i in rows], [prompts[i] for i in rows])
        texts = generate(model, processor, batch, cfg.sft.max_new_tokens, generator=generator,
                         **sampling.kwargs()).texts
        for n, i in enumerate(prompt_rows):
            samples = texts[n * k:(n + 1) * k]
            gold = [gold_score(t, references[i]) for t in samples]
            pairs += simulate_preferences(ids[i], samples, gold, fb.bt_temperature, rng, fb.annotator)
    if not pairs:
        raise ValueError("feedback: every prompt's samples tied on gold score; no preference pair to write")
    write_table([dataclasses.asdict(p) for p in pairs], paths.pairs, PREFERENCE_SCHEMA)
    write_lineage(cfg, record, FEEDBACK_SIMULATE.folder)
    print(f"feedback: {len(pairs)} preference pairs from {len(ids)} prompts x {k} samples")
    return len(pairs)
