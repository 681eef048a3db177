"""Stage 3, feedback, from people: a file of human judgements → ``<run_dir>/feedback/pairs.parquet``.

The other source of the same pairs as :mod:`mmrlhf.stages.feedback` (the simulated annotator).
Pairwise choices, rankings and ratings are turned into preference pairs by
:mod:`mmrlhf.feedback.importer`; every pair must name a prompt of the run's feedback split,
whose image the reward model scores with it. With ``append`` the pairs join those already
there (e.g. simulated + human); without it an existing file is left alone.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pyarrow as pa

from mmrlhf.config import RunConfig
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table, to_table, write_table
from mmrlhf.feedback.importer import read_feedback_file
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.lineage import check_no_dependents, feedback_import_stage, lineage_of, read_lineage, write_lineage
from mmrlhf.stages.data import load_split, prepare_data


def run_feedback_import(cfg: RunConfig, path: str | Path, kind: str, append: bool = False,
                        force: bool = False) -> int:
    """Import a human feedback file of ``kind`` (:data:`mmrlhf.feedback.importer.KINDS`); returns the pairs added.

    Prints the pairs added and what the kind drops by design (VLFeedback ties, cancelled
    Label Studio annotations), with counts.

    The pairs file is written atomically (``write_table``), so an error leaves it as it was.
    Builds the data splits first if they are missing (as ``mmrlhf feedback simulate`` does).
    Writes ``feedback/lineage.json`` naming the feedback split and every imported file (an
    append adds to the files already named); ``force`` skips the lineage checks.

    Raises:
        FileExistsError: the run already has preference pairs and ``append`` is False.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown kind or suffix, a malformed row or a prompt id outside the feedback
            split (naming the file, line/row and field), or no pair in the file.
        StaleOutputError: the splits are stale, or an append while outputs made from ``feedback/`` exist.
    """
    paths = RunPaths(cfg.run_dir)
    if paths.pairs.exists() and not append:
        raise FileExistsError(f"{paths.pairs} already holds preference pairs; pass --append to add "
                              "the imported ones to them, or remove the file")
    prepare_data(cfg, force=force)
    record = lineage_of(cfg, feedback_import_stage(path, kind), [paths.split("feedback"), Path(path)])
    old = read_lineage(paths.root, "feedback") if paths.pairs.exists() else None
    if old is not None:
        record["inputs"] = {**old["inputs"], **record["inputs"]}
    check_no_dependents(cfg, record, "feedback", force)
    prompt_ids = set(load_split(cfg, "feedback").column("id").to_pylist())
    dropped: Counter = Counter()
    pairs = read_feedback_file(path, kind, prompt_ids, dropped)
    table = to_table([dataclasses.asdict(p) for p in pairs], PREFERENCE_SCHEMA)
    if paths.pairs.exists():
        table = pa.concat_tables([read_table(paths.pairs, PREFERENCE_SCHEMA), table])
    write_table(table, paths.pairs, PREFERENCE_SCHEMA)
    write_lineage(cfg, record, "feedback")
    n_prompts = len({p.prompt_id for p in pairs})
    n_annotators = len({p.annotator for p in pairs})
    skipped = "".join(f"; dropped {n} {what}" for what, n in sorted(dropped.items()))
    print(f"feedback import: {len(pairs)} preference pairs ({kind}) over {n_prompts} prompts from "
          f"{n_annotators} annotators; {paths.pairs} holds {table.num_rows}{skipped}")
    return len(pairs)
