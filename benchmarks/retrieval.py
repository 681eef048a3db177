"""Cross-modal retrieval on held-out data: the trained joint embedding beside the untrained one and chance.

Recall@1/5/10 of both directions (text -> images, image -> texts; :func:`mmrlhf.stages.retrieve.retrieval_metrics`)
on a split the reward model never trained on (default: test), for the run's trained reward model
(``reward/model``: contrastive warm start + Bradley–Terry), the same architecture before
training (``model.reward``: for the presets, random weights) and a uniformly random ranking
(the expected value, exact). Prints a Markdown table and the machine.

    python benchmarks/retrieval.py --run-dir runs/digits [--config jobs/digits.yaml] [--split test] [--json PATH]

Needs a run directory where ``mmrlhf reward train`` has run (``mmrlhf train`` or the stages
``data``, ``sft``, ``feedback simulate``, ``reward train``).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import report
from mmrlhf.config import load_config
from mmrlhf.data.schema import record_references
from mmrlhf.stages.data import decode_images, load_split
from mmrlhf.stages.retrieve import embed_split, load_embedder, retrieval_metrics

KEYS = [f"{direction}_recall@{k}" for direction in ("t2i", "i2t") for k in (1, 5, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", default=None, help="the run's experiment YAML (e.g. jobs/digits.yaml)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, [*args.overrides, f"run_dir={args.run_dir}"])
    table = load_split(cfg, args.split)
    ids, references = table.column("id").to_pylist(), record_references(table)
    images = decode_images(table, cfg.data.media)
    start = time.perf_counter()
    splits = {model: embed_split(load_embedder(cfg, model), ids, images, references) for model in ("trained", "untrained")}
    rows = [[name, *(100 * metrics[key] for key in KEYS)] for name, metrics in (
        ("trained", retrieval_metrics(splits["trained"])),
        (f"untrained ({cfg.model.reward})", retrieval_metrics(splits["untrained"])),
        ("chance (random ranking)", retrieval_metrics(splits["trained"], chance=True)))]
    split = splits["trained"]
    n_labeled = sum(1 for refs in split.image_texts if refs)
    notes = [f"Recall@K in percent on the {args.split} split of {args.run_dir}: {len(split.texts)} distinct texts "
             f"query {len(ids)} images (t2i), {n_labeled} images query those texts (i2t); a hit is any item whose "
             f"text equals the query's, ties count against the query. {time.perf_counter() - start:.0f} s."]
    report("Cross-modal retrieval with the reward model's joint embedding",
           ["embedding", *[key.replace("_recall", " R") for key in KEYS]], rows, notes, args.json)


if __name__ == "__main__":
    main()
