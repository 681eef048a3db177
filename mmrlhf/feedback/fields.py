"""Checks on the fields of a feedback row, shared by every import format.

Each raises ValueError naming the place (``where``: the file and line/row/entry) and the field,
so a malformed row fails an import with a message the user can act on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from mmrlhf.data.formats import require_field

ANONYMOUS = "anonymous"  # the annotator of a row that names none
Rows = Iterable[tuple[str, Any]]  # (where, row): `where` names the file and line/row in errors


def text_field(where: str, row: Any, field: str) -> str:
    """row[field] as non-empty text, or ValueError naming the row and field."""
    return check_text(where, field, require_field(where, row, field))


def check_text(where: str, field: str, value: Any) -> str:
    """``value`` when it is a string with a non-blank character, else ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field '{field}' must be non-empty text, got {value!r}")
    return value


def check_prompt_id(where: str, prompt_id: str, prompt_ids: Collection[str] | None) -> str:
    """``prompt_id`` when ``prompt_ids`` is None or holds it, else ValueError naming the row."""
    if prompt_ids is not None and prompt_id not in prompt_ids:
        raise ValueError(f"{where}: prompt_id {prompt_id!r} is not in the run's feedback split "
                         "(the reward model needs the prompt's image)")
    return prompt_id


def annotator_of(where: str, row: dict[str, Any], default: str = ANONYMOUS) -> str:
    """The row's ``annotator`` as text, or ``default`` where it names none (missing or blank)."""
    annotator = row.get("annotator")
    if annotator is None or (isinstance(annotator, str) and not annotator.strip()):
        return default
    return check_text(where, "annotator", annotator)


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number or the text of one, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # not a number's text; the caller names the row
        return None
    return number if math.isfinite(number) else None
