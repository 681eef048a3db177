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

Published data sets (RLHF-V / RLAIF-V, LLaVA-RLHF, VLFeedback, POVID, TRL's convention) and
Label Studio exports are read by :mod:`mmrlhf.feedback.published` and
:mod:`mmrlhf.feedback.label_studio` (the :data:`PUBLISHED` kinds).

Pairs get ``source="import:<kind>"``, ``origin`` (the file and line/row they came from) and,
where a row names no annotator, the annotator ``"anonymous"``. A malformed row fails the whole import with a ValueError naming the file, the
line or row, the field and what was expected: the pairs train the reward model, and a row
dropped in silence would bias it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from mmrlhf.data.formats import JSON_LIST_SUFFIX, ROW_FILE_SUFFIXES, read_rows, require_field
from mmrlhf.feedback.fields import Rows, annotator_of, check_prompt_id, check_text, finite_number, text_field
from mmrlhf.feedback.label_studio import label_studio_pairs
from mmrlhf.feedback.published import READERS, Reader
from mmrlhf.types import PreferencePair

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
        chosen, rejected = text_field(where, row, "chosen"), text_field(where, row, "rejected")
        if chosen == rejected:
            raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text ({chosen!r}); "
                             "a preference pair needs two different responses")
        pairs.append(PreferencePair(prompt_id, chosen, rejected, annotator, "import:pairwise", origin=where))
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
        texts = [check_text(where, f"responses[{i}]", text) for i, text in enumerate(ranked)]
        if len(set(texts)) < len(texts):
            repeated = next(text for i, text in enumerate(texts) if text in texts[:i])
            raise ValueError(f"{where}: field 'responses' holds {repeated!r} twice; a ranking "
                             "orders distinct responses")
        # ALGO: each response is preferred to every response ranked below it
        pairs += [PreferencePair(prompt_id, better, worse, annotator, "import:ranking", origin=where)
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
        response = text_field(where, row, "response")
        value = require_field(where, row, "rating")
        rating = finite_number(value)
        if rating is None:
            raise ValueError(f"{where}: field 'rating' must be a finite number, got {value!r}")
        group = rated.setdefault((prompt_id, annotator), {})
        if response in group:
            raise ValueError(f"{where}: annotator {annotator!r} already rated this response to prompt "
                             f"{prompt_id!r} ({group[response][1]})")
        group[response] = (rating, where)
    pairs = []
    for (prompt_id, annotator), group in rated.items():
        for (a, (rating_a, where_a)), (b, (rating_b, where_b)) in itertools.combinations(group.items(), 2):
            if rating_a != rating_b:
                (chosen, at_chosen), (rejected, at_rejected) = (
                    ((a, where_a), (b, where_b)) if rating_a > rating_b else ((b, where_b), (a, where_a)))
                pairs.append(PreferencePair(prompt_id, chosen, rejected, annotator, "import:rating",
                                            origin=f"{at_chosen}; {at_rejected}"))
    return pairs


CONVERTERS: dict[str, Callable[[Rows, Collection[str] | None], list[PreferencePair]]] = {
    "pairwise": pairwise_pairs, "ranking": ranking_pairs, "rating": rating_pairs}
PAGE_KIND = "page"  # the labeling page's answers: a tasks folder, read by mmrlhf.feedback.answers
# published data sets and Label Studio exports: (rows, prompt_ids, dropped counts) -> pairs
PUBLISHED: dict[str, Reader] = {**READERS, "label-studio": label_studio_pairs}
KINDS = (*CONVERTERS, PAGE_KIND, *PUBLISHED)


def read_feedback_file(path: str | Path, kind: str, prompt_ids: Collection[str] | None = None,
                       dropped: Counter | None = None) -> list[PreferencePair]:
    """Read a human feedback file (``.jsonl``, ``.csv`` or ``.parquet``) of ``kind`` as pairs.

    ``kind``: one of :data:`KINDS` (the module docstring gives each one's fields); ``page``
    reads the answers the labeling page stored in the tasks folder ``path``
    (:func:`mmrlhf.feedback.answers.read_answer_pairs`); the :data:`PUBLISHED` kinds read a data
    set's published shape (:mod:`mmrlhf.feedback.published`, :mod:`mmrlhf.feedback.label_studio`),
    also from a ``.json`` list, and count what they drop by design (ties, cancelled annotations)
    in ``dropped``. ``prompt_ids`` as in :func:`pairwise_pairs`.
    Raises FileNotFoundError when ``path`` does not exist; ValueError for an unknown kind or
    suffix, a malformed row (naming the file, line/row/entry and field), or a file that yields
    no preference pair.
    """
    if kind == PAGE_KIND:
        from mmrlhf.feedback.answers import read_answer_pairs  # imports this module

        pairs = read_answer_pairs(path, prompt_ids)
    elif kind in PUBLISHED:
        rows = read_rows(path, f"{kind} file", suffixes=(*ROW_FILE_SUFFIXES, JSON_LIST_SUFFIX))
        pairs = PUBLISHED[kind](rows, prompt_ids, Counter() if dropped is None else dropped)
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
    prompt_id = check_prompt_id(where, text_field(where, row, "prompt_id"), prompt_ids)
    return prompt_id, annotator_of(where, row)
