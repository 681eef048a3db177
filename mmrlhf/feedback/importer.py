"""Human feedback files → preference pairs: pairwise choices, rankings and ratings.

One row per judgement, in JSONL, CSV or Parquet (:func:`mmrlhf.data.formats.read_rows`):

- ``pairwise``: ``prompt_id``, ``chosen``, ``rejected``, optional ``annotator``.
- ``ranking``: ``prompt_id``, ``responses`` (a list, best first), optional ``annotator``. K
  ranked responses give all K·(K-1)/2 pairs, as in InstructGPT (Ouyang et al. 2022 §3.5).
  A list does not fit in a CSV cell: rankings come in JSONL or Parquet.
- ``rating``: ``prompt_id``, ``response``, ``rating`` (a number, higher is better), optional
  ``annotator``. For each prompt and annotator, every two responses with different ratings give
  a pair; equal ratings give none (no preference), and ratings are never compared across
  annotators, whose scales differ.

Pairs get ``source="import:<kind>"`` and, where a row names no annotator, the annotator
``"anonymous"``. A malformed row fails the whole import with a ValueError naming the file, the
line or row, the field and what was expected: the pairs train the reward model, and a row
dropped in silence would bias it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from mmrlhf.data.formats import read_rows, require_field
from mmrlhf.types import PreferencePair

Rows = Iterable[tuple[str, Any]]  # (where, row): `where` names the file and line/row in errors
ANONYMOUS = "anonymous"  # the annotator of a row that names none
# Read as text from CSV, never inferred: a prompt id "007" stays "007", and a rating column
# with one typo in it is reported at that row, not at the first row (as a column of strings)
_TEXT_COLUMNS = ("prompt_id", "chosen", "rejected", "response", "rating", "annotator")


def pairwise_pairs(rows: Rows, prompt_ids: Collection[str] | None = None) -> list[PreferencePair]:
    """One preference pair per row of ``prompt_id``, ``chosen``, ``rejected``, ``annotator``.

    ``prompt_ids``: the ids a pair may name (the run's feedback split); None accepts any.
    Raises ValueError naming the row and field: a missing field, an empty or non-text
    response, ``chosen`` equal to ``rejected``, a prompt id outside ``prompt_ids``.
    """
    pairs = []
    for where, row in rows:
        prompt_id, annotator = _prompt_and_annotator(where, row, prompt_ids)
        chosen, rejected = _text(where, row, "chosen"), _text(where, row, "rejected")
        if chosen == rejected:
            raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text ({chosen!r}); "
                             "a preference pair needs two different responses")
        pairs.append(PreferencePair(prompt_id, chosen, rejected, annotator, "import:pairwise"))
    return pairs


def ranking_pairs(rows: Rows, prompt_ids: Collection[str] | None = None) -> list[PreferencePair]:
    """Every pair of a ranking: row ``responses`` (K texts, best first) gives K·(K-1)/2 pairs.

    Follows InstructGPT (Ouyang et al. 2022 §3.5): a labeler's ranking of K responses is
    used as all its pairwise comparisons. ``prompt_ids`` as in :func:`pairwise_pairs`.
    Raises ValueError naming the row and field: a missing field, ``responses`` not a list
    of at least 2 texts, an empty or repeated response, a prompt id outside ``prompt_ids``.
    """
    pairs = []
    for where, row in rows:
        prompt_id, annotator = _prompt_and_annotator(where, row, prompt_ids)
        ranked = require_field(where, row, "responses")
        if not isinstance(ranked, list) or len(ranked) < 2:
            got = f"{len(ranked)} response(s)" if isinstance(ranked, list) else type(ranked).__name__
            raise ValueError(f"{where}: field 'responses' must be a list of at least 2 responses, "
                             f"best first; got {got}")
        texts = [_check_text(where, f"responses[{i}]", text) for i, text in enumerate(ranked)]
        if len(set(texts)) < len(texts):
            repeated = next(text for i, text in enumerate(texts) if text in texts[:i])
            raise ValueError(f"{where}: field 'responses' holds {repeated!r} twice; a ranking "
                             "orders distinct responses")
        # ALGO: each response is preferred to every response ranked below it
        pairs += [PreferencePair(prompt_id, better, worse, annotator, "import:ranking")
                  for better, worse in itertools.combinations(texts, 2)]
    return pairs


def rating_pairs(rows: Rows, prompt_ids: Collection[str] | None = None) -> list[PreferencePair]:
    """Pairs from ratings: rows of ``prompt_id``, ``response``, ``rating``, ``annotator``.

    Within each (prompt, annotator), every two responses with different ratings give a pair,
    the higher-rated one chosen; equal ratings give none. A rating is a finite number, or its
    text (as CSV holds it). ``prompt_ids`` as in :func:`pairwise_pairs`.
    Raises ValueError naming the row and field: a missing field, an empty response, a rating
    that is not a finite number (NaN, inf, text), a response the same annotator rated twice
    for the same prompt, a prompt id outside ``prompt_ids``.
    """
    # (prompt_id, annotator) -> response -> (rating, where)
    rated: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for where, row in rows:
        prompt_id, annotator = _prompt_and_annotator(where, row, prompt_ids)
        response = _text(where, row, "response")
        value = require_field(where, row, "rating")
        rating = _finite_number(value)
        if rating is None:
            raise ValueError(f"{where}: field 'rating' must be a finite number, got {value!r}")
        group = rated.setdefault((prompt_id, annotator), {})
        if response in group:
            raise ValueError(f"{where}: annotator {annotator!r} already rated this response to prompt "
                             f"{prompt_id!r} ({group[response][1]})")
        group[response] = (rating, where)
    pairs = []
    for (prompt_id, annotator), group in rated.items():
        for (a, (rating_a, _)), (b, (rating_b, _)) in itertools.combinations(group.items(), 2):
            if rating_a != rating_b:
                chosen, rejected = (a, b) if rating_a > rating_b else (b, a)
                pairs.append(PreferencePair(prompt_id, chosen, rejected, annotator, "import:rating"))
    return pairs


CONVERTERS: dict[str, Callable[[Rows, Collection[str] | None], list[PreferencePair]]] = {
    "pairwise": pairwise_pairs, "ranking": ranking_pairs, "rating": rating_pairs}
PAGE_KIND = "page"  # the labeling page's answers: a tasks folder, read by mmrlhf.feedback.answers
KINDS = (*CONVERTERS, PAGE_KIND)


def read_feedback_file(path: str | Path, kind: str, prompt_ids: Collection[str] | None = None) -> list[PreferencePair]:
    """Read a human feedback file (``.jsonl``, ``.csv`` or ``.parquet``) of ``kind`` as pairs.

    ``kind``: one of :data:`KINDS` (the module docstring gives each one's fields); ``page``
    reads the answers the labeling page stored in the tasks folder ``path``
    (:func:`mmrlhf.feedback.answers.read_answer_pairs`). ``prompt_ids`` as in :func:`pairwise_pairs`.
    Raises FileNotFoundError when ``path`` does not exist; ValueError for an unknown kind or
    suffix, a malformed row (naming the file, line/row and field), or a file that yields no
    preference pair.
    """
    if kind == PAGE_KIND:
        from mmrlhf.feedback.answers import read_answer_pairs  # imports this module

        pairs = read_answer_pairs(path, prompt_ids)
    elif kind not in CONVERTERS:
        raise ValueError(f"unknown feedback kind {kind!r}; expected one of {', '.join(KINDS)}")
    else:
        pairs = CONVERTERS[kind](read_rows(path, "feedback file", text_columns=_TEXT_COLUMNS), prompt_ids)
    if not pairs:
        raise ValueError(f"{path}: no preference pair in this {kind} file (it has no rows, or no "
                         "annotator gave two responses to one prompt different ratings)")
    return pairs


def _prompt_and_annotator(where: str, row: Any, prompt_ids: Collection[str] | None) -> tuple[str, str]:
    """The row's prompt id (checked against ``prompt_ids``) and annotator (ANONYMOUS if none)."""
    prompt_id = _text(where, row, "prompt_id")
    if prompt_ids is not None and prompt_id not in prompt_ids:
        raise ValueError(f"{where}: prompt_id {prompt_id!r} is not in the run's feedback split "
                         "(the reward model needs the prompt's image)")
    annotator = row.get("annotator")
    if annotator is None or (isinstance(annotator, str) and not annotator.strip()):
        return prompt_id, ANONYMOUS
    return prompt_id, _check_text(where, "annotator", annotator)


def _text(where: str, row: Any, field: str) -> str:
    """row[field] as non-empty text, or ValueError naming the row and field."""
    return _check_text(where, field, require_field(where, row, field))


def _check_text(where: str, field: str, value: Any) -> str:
    """``value`` when it is a string with a non-blank character, else ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field '{field}' must be non-empty text, got {value!r}")
    return value


def _finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number or the text of one, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # not a number's text; the caller names the row
        return None
    return number if math.isfinite(number) else None
