"""The labeling page's answers: one Parquet part file per answer, and the pairs they give.

Appending is atomic without a lock: each answer is written to a temporary file in
``<tasks>/answers/``, flushed to disk (``fsync``), then renamed to ``part-<ns>-<uuid>.parquet``
(``os.replace``, atomic on POSIX). Readers see only renamed parts, so a killed replica or a
crash never leaves a half-written answer, and two annotators answering at once write two files
and lose nothing. A part is never changed after its rename, so readers cache parsed parts.

The same showing answered twice (a page resubmitting after a lost response) is kept once, the
earliest; the key is (annotator, item, repeat). Answers become preference pairs the way
``feedback import`` makes them (:mod:`mmrlhf.feedback.importer`): pairwise choices as
``pairwise`` rows, orderings as ``ranking`` rows, ratings as ``rating`` rows, with
``source="labeling-page:<mode>"``. Repeats (shown again with sides swapped) only measure
self-consistency and give no pair; ties and "can't judge" give none either.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmrlhf.feedback.importer import CONVERTERS
from mmrlhf.types import PreferencePair

ANSWERS_DIR = "answers"
ANSWER_SCHEMA = pa.schema([
    pa.field("answer_id", pa.string(), nullable=False),
    pa.field("submitted_at", pa.float64(), nullable=False),     # Unix time, seconds
    pa.field("annotator", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),           # task_id (pairwise, ranking) or prompt_id (rating)
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),              # pairwise, ranking or rating
    pa.field("repeat", pa.bool_(), nullable=False),             # a self-consistency repeat, sides swapped
    pa.field("responses", pa.list_(pa.string()), nullable=False),  # in task order (a, b for pairwise)
    pa.field("shown", pa.list_(pa.int32()), nullable=False),    # response indices in display order (left first)
    pa.field("choice", pa.string()),        # pairwise, as shown: A>>B, A>B, tie, B>A, B>>A, cant_judge
    pa.field("preferred", pa.string()),     # pairwise, sides resolved: a, b, tie or cant_judge
    pa.field("strength", pa.int8()),        # pairwise: 2 (much better), 1 (better), 0 (tie)
    pa.field("chosen", pa.string()),        # pairwise: the preferred text (null on tie / can't judge)
    pa.field("rejected", pa.string()),
    pa.field("ranking", pa.list_(pa.string())),   # ranking mode: texts best first
    pa.field("ratings", pa.list_(pa.int8())),     # rating mode: 1-5 per response, task order
    pa.field("gold_correct", pa.bool_()),   # gold items: whether the choice matched the known answer
    pa.field("rationale", pa.string()),
    pa.field("seconds", pa.float64(), nullable=False),          # time on the item before submitting
    pa.field("page_version", pa.string(), nullable=False),
])


def answer_key(answer: dict[str, Any]) -> tuple[str, str, bool]:
    """What makes two answers the same showing: (annotator, item_id, repeat)."""
    return answer["annotator"], answer["item_id"], answer["repeat"]


class AnswerStore:
    """The answers folder of a tasks folder; safe to use from several processes at once."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._parsed: dict[str, list[dict[str, Any]]] = {}  # part name -> its rows (parts never change)

    def append(self, answer: dict[str, Any]) -> Path:
        """Write one answer (a dict with :data:`ANSWER_SCHEMA`'s fields) as a new part; returns it.

        Raises ValueError naming the field when the answer does not fit the schema.
        """
        try:
            table = pa.Table.from_pylist([answer], schema=ANSWER_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as err:
            raise ValueError(f"answer {answer.get('answer_id')}: does not fit the answer schema ({err})") from err
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
        tmp = self.folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)  # the rename itself survives a power cut
        return self.folder / name

    def read(self) -> list[dict[str, Any]]:
        """Every answer, oldest first, one per :func:`answer_key` (the earliest).

        Raises ValueError naming a part that is not Parquet or does not fit the schema.
        """
        parts = sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []
        for part in parts:
            if part.name not in self._parsed:
                self._parsed[part.name] = _read_part(part)
        rows = sorted((row for part in parts for row in self._parsed[part.name]),
                      key=lambda r: (r["submitted_at"], r["answer_id"]))
        first: dict[tuple, dict[str, Any]] = {}
        for row in rows:
            first.setdefault(answer_key(row), row)
        return list(first.values())


def answers_to_pairs(answers: list[dict[str, Any]], prompt_ids: Collection[str] | None = None,
                     where: str = "answers") -> list[PreferencePair]:
    """Preference pairs from first showings (module docstring), via the import converters.

    ``prompt_ids`` as in :func:`mmrlhf.feedback.importer.pairwise_pairs`. Raises ValueError for
    answers of more than one mode, or as the converters do (naming ``<where> answer <id>``).
    """
    firsts = [a for a in answers if not a["repeat"]]
    modes = {a["mode"] for a in firsts}
    if len(modes) > 1:
        raise ValueError(f"{where}: answers of several modes ({', '.join(sorted(modes))}); one tasks folder has one")
    if not modes:
        return []
    (mode,) = modes
    rows = []
    for a in firsts:
        name = f"{where} answer {a['answer_id']}"
        if mode == "pairwise" and a["preferred"] in ("a", "b"):
            rows.append((name, {"prompt_id": a["prompt_id"], "chosen": a["chosen"], "rejected": a["rejected"],
                                "annotator": a["annotator"]}))
        elif mode == "ranking":
            rows.append((name, {"prompt_id": a["prompt_id"], "responses": a["ranking"], "annotator": a["annotator"]}))
        elif mode == "rating":
            rows += [(name, {"prompt_id": a["prompt_id"], "response": text, "rating": rating,
                             "annotator": a["annotator"]}) for text, rating in zip(a["responses"], a["ratings"])]
    pairs = CONVERTERS[mode](rows, prompt_ids)
    return [dataclasses.replace(p, source=f"labeling-page:{mode}") for p in pairs]


def read_answer_pairs(tasks_dir: str | Path, prompt_ids: Collection[str] | None = None) -> list[PreferencePair]:
    """The pairs of a tasks folder's answers (:func:`answers_to_pairs`).

    Raises FileNotFoundError when the folder has no answers yet.
    """
    folder = Path(tasks_dir) / ANSWERS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no answers yet (serve the tasks with `mmrlhf feedback label`)")
    return answers_to_pairs(AnswerStore(folder).read(), prompt_ids, str(folder))


def annotator_stats(answers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per annotator: ``answers``, ``gold_items`` / ``gold_accuracy`` (share of judged gold items
    answered as known), ``repeats`` / ``self_consistency`` (share of repeats whose resolved
    choice a, b or tie equals the first showing's; "can't judge" on either is left out) and
    ``median_seconds``. A share is None when nothing counts towards it.
    """
    stats = {}
    for annotator in sorted({a["annotator"] for a in answers}):
        mine = [a for a in answers if a["annotator"] == annotator]
        gold = [a["gold_correct"] for a in mine if a["gold_correct"] is not None]
        first = {a["item_id"]: a["preferred"] for a in mine if not a["repeat"]}
        agree = [first[a["item_id"]] == a["preferred"] for a in mine
                 if a["repeat"] and a["preferred"] != "cant_judge" and first.get(a["item_id"], "cant_judge") != "cant_judge"]
        stats[annotator] = {
            "answers": len(mine), "gold_items": len(gold), "gold_accuracy": _share(gold),
            "repeats": len(agree), "self_consistency": _share(agree),
            "median_seconds": statistics.median(a["seconds"] for a in mine)}
    return stats


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _read_part(part: Path) -> list[dict[str, Any]]:
    try:
        return pq.read_table(part).select(ANSWER_SCHEMA.names).cast(ANSWER_SCHEMA).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, OSError) as err:
        raise ValueError(f"{part}: not an answer part ({err})") from err


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
