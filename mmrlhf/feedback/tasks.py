"""Comparison tasks for people: the folder ``mmrlhf feedback sample`` writes and the labeling page serves.

A tasks folder holds, side by side:

- ``tasks.parquet`` and ``tasks.jsonl``: the same rows, in the shape ``mmrlhf feedback import
  --kind <kind>`` (:mod:`mmrlhf.feedback.importer`) reads once the blank fields are filled in;
- ``images/<n>.png``: each prompt's image, named by the rows' ``image`` field (a path relative
  to the folder);
- ``tasks.html``: a self-contained page with thumbnails for reading the tasks offline
  (:mod:`mmrlhf.feedback.tasks_page`);
- ``tasks.json``: what made them (kind, policy, counts);
- ``answers/``: later, the labeling page's answers (:mod:`mmrlhf.feedback.answers`).

Rows by kind (every row also has ``task_id``, ``prompt_id``, ``prompt``, ``image`` and a blank
``annotator``):

- ``pairwise``: one row per two distinct responses to a prompt: ``response_a``, ``response_b``,
  blank ``chosen`` / ``rejected`` to fill with the two texts;
- ``ranking``: one row per prompt: ``responses`` (K texts, drawn order), to reorder best first;
- ``rating``: one row per response: ``response`` and a blank ``rating`` (1–5).

Blank fields stay null, so a row nobody filled in fails the import naming that row instead of
becoming a preference. Columns the annotator must not see are kept for scoring: ``gold_*``
(the task's gold score of each response, e.g. :func:`mmrlhf.data.digits.gold_score`),
``known_better`` (``"a"`` or ``"b"`` on the pairwise *gold items*, pairs whose answer is known
and which score annotators) and ``origin_a`` / ``origin_b`` (which policy wrote each response,
for human evaluation).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrlhf.feedback.tasks_page import tasks_html
from mmrlhf.stages.common import atomic_dir, write_json

TASK_KINDS = ("pairwise", "ranking", "rating")
TASKS_PARQUET, TASKS_JSONL, TASKS_HTML, TASKS_META, IMAGES_DIR = (
    "tasks.parquet", "tasks.jsonl", "tasks.html", "tasks.json", "images")

_COMMON = [pa.field("task_id", pa.string(), nullable=False), pa.field("prompt_id", pa.string(), nullable=False),
           pa.field("prompt", pa.string(), nullable=False), pa.field("image", pa.string(), nullable=False),
           pa.field("annotator", pa.string())]
TASK_SCHEMAS = {
    "pairwise": pa.schema(_COMMON + [
        pa.field("response_a", pa.string(), nullable=False), pa.field("response_b", pa.string(), nullable=False),
        pa.field("chosen", pa.string()), pa.field("rejected", pa.string()),
        pa.field("gold_a", pa.float64()), pa.field("gold_b", pa.float64()), pa.field("known_better", pa.string()),
        pa.field("origin_a", pa.string()), pa.field("origin_b", pa.string())]),
    "ranking": pa.schema(_COMMON + [pa.field("responses", pa.list_(pa.string()), nullable=False),
                                    pa.field("gold", pa.list_(pa.float64()))]),
    "rating": pa.schema(_COMMON + [pa.field("response", pa.string(), nullable=False),
                                   pa.field("rating", pa.float64()), pa.field("gold", pa.float64())]),
}
HIDDEN_FIELDS = ("gold_a", "gold_b", "gold", "known_better", "origin_a", "origin_b")  # never shown to annotators


@dataclass
class PromptSamples:
    """The distinct responses to one prompt that people will judge."""

    prompt_id: str                    # record id of the prompt and its image
    prompt: str
    image_png: bytes                  # the record's encoded image
    responses: list[str]              # K >= 2 distinct texts
    gold: list[float] | None = None   # K gold scores, when the task has one
    origins: list[str] | None = None  # K names of the policy that wrote each response (human eval)


def task_rows(kind: str, prompts: list[PromptSamples], rng: np.random.Generator,
              gold_fraction: float = 0.1) -> list[dict[str, Any]]:
    """The task rows of ``kind`` for ``prompts`` (fields as in the module docstring).

    ``gold_fraction``: in pairwise tasks, the share of pairs with unequal gold scores that become
    gold items (``known_better`` set; at least one when any pair qualifies and the fraction is
    > 0), drawn with ``rng``. Images are named ``images/<index of the prompt>.png``.
    Raises ValueError for an unknown kind, a prompt with fewer than 2 or repeated responses,
    or gold/origins lists whose length differs from the responses'.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    rows = []
    for index, p in enumerate(prompts):
        _check_prompt(p)
        common = {"prompt_id": p.prompt_id, "prompt": p.prompt, "image": f"{IMAGES_DIR}/{index}.png",
                  "annotator": None}
        gold = p.gold or [None] * len(p.responses)
        if kind == "ranking":
            rows.append({"task_id": p.prompt_id, **common, "responses": list(p.responses), "gold": p.gold})
        elif kind == "rating":
            rows += [{"task_id": f"{p.prompt_id}/{j}", **common, "response": text, "rating": None, "gold": g}
                     for j, (text, g) in enumerate(zip(p.responses, gold))]
        else:
            origins = p.origins or [None] * len(p.responses)
            rows += [{"task_id": f"{p.prompt_id}/{i}-{j}", **common, "response_a": p.responses[i],
                      "response_b": p.responses[j], "chosen": None, "rejected": None, "gold_a": gold[i],
                      "gold_b": gold[j], "known_better": None, "origin_a": origins[i], "origin_b": origins[j]}
                     for i, j in itertools.combinations(range(len(p.responses)), 2)]
    if kind == "pairwise":
        _mark_gold_items(rows, rng, gold_fraction)
    return rows


def write_tasks(out_dir: str | Path, kind: str, prompts: list[PromptSamples], rows: list[dict[str, Any]],
                meta: dict[str, Any]) -> Path:
    """Write a tasks folder (module docstring) atomically; returns its path.

    ``rows`` from :func:`task_rows` for the same ``prompts`` and ``kind``; ``meta`` goes into
    ``tasks.json`` with the kind and counts. Raises FileExistsError when ``out_dir`` exists
    (it may hold people's answers), ValueError for a row that does not fit the kind's schema.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists (it may hold answers); pass another --out or remove it")
    try:
        table = pa.Table.from_pylist(rows, schema=TASK_SCHEMAS[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{out_dir}: a task row does not fit the {kind} schema ({err})") from err
    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        images = {}
        for index, p in enumerate(prompts):
            (tmp / IMAGES_DIR / f"{index}.png").write_bytes(p.image_png)
            images[f"{IMAGES_DIR}/{index}.png"] = p.image_png
        pq.write_table(table, tmp / TASKS_PARQUET)  # the folder as a whole is what's atomic
        (tmp / TASKS_JSONL).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        visible = [{k: v for k, v in row.items() if k not in HIDDEN_FIELDS} for row in rows]
        (tmp / TASKS_HTML).write_text(tasks_html(kind, visible, images), encoding="utf-8")
        write_json(tmp / TASKS_META, {**meta, "kind": kind, "n_tasks": len(rows), "n_prompts": len(prompts)})
    return out_dir


@dataclass
class TaskSet:
    """A tasks folder as read back: its kind, rows and images."""

    root: Path
    kind: str
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def image_bytes(self, row: dict[str, Any]) -> bytes:
        """The encoded image of a task row (its ``image`` path, relative to the folder)."""
        return (self.root / row["image"]).read_bytes()


def load_tasks(tasks_dir: str | Path) -> TaskSet:
    """Read a folder written by :func:`write_tasks`.

    Raises FileNotFoundError when it has no ``tasks.json`` (names the command that writes one);
    ValueError for an unknown kind or rows that do not match the kind's schema.
    """
    root = Path(tasks_dir)
    meta_path = root / TASKS_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root}: no comparison tasks here (no {TASKS_META}); "
                                "run `mmrlhf feedback sample` first")
    meta = json.loads(meta_path.read_text())
    kind = meta.get("kind")
    if kind not in TASK_KINDS:
        raise ValueError(f"{meta_path}: kind {kind!r}, expected one of {', '.join(TASK_KINDS)}")
    table = pq.read_table(root / TASKS_PARQUET)
    schema = TASK_SCHEMAS[kind]
    if table.schema.names != schema.names:
        raise ValueError(f"{root / TASKS_PARQUET}: columns {table.schema.names}, expected {schema.names} ({kind} tasks)")
    try:
        rows = table.cast(schema).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"{root / TASKS_PARQUET}: does not fit the {kind} task schema ({err})") from err
    return TaskSet(root, kind, rows, meta)


def _check_prompt(p: PromptSamples) -> None:
    if len(p.responses) < 2 or len(set(p.responses)) < len(p.responses):
        raise ValueError(f"prompt {p.prompt_id}: expected at least 2 distinct responses, got {p.responses!r}")
    for name in ("gold", "origins"):
        values = getattr(p, name)
        if values is not None and len(values) != len(p.responses):
            raise ValueError(f"prompt {p.prompt_id}: {len(values)} {name} for {len(p.responses)} responses")


def _mark_gold_items(rows: list[dict[str, Any]], rng: np.random.Generator, fraction: float) -> None:
    """Set ``known_better`` on a ``fraction`` of the pairs whose gold scores differ (at least one)."""
    known = [i for i, r in enumerate(rows) if r["gold_a"] is not None and r["gold_a"] != r["gold_b"]]
    if not known or fraction <= 0:
        return
    count = min(len(known), max(1, round(fraction * len(known))))
    for i in rng.choice(known, size=count, replace=False):
        rows[i]["known_better"] = "a" if rows[i]["gold_a"] > rows[i]["gold_b"] else "b"
