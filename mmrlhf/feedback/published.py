"""Published multimodal preference data sets → preference pairs, their provenance kept.

Each reader takes rows in the data set's published shape (``(where, row)`` as
:func:`mmrlhf.data.formats.read_rows` gives them; the JSON-list releases are read as entries):

- ``rlhf-v``: RLAIF-V (Yu et al. 2024) rows ``idx``, ``image``, ``question``, ``chosen``,
  ``rejected`` (plus ``ds_name``, ``origin_dataset``, ...); RLHF-V (Yu et al. 2023) rows hold the
  last three as the JSON text of their ``text`` field.
- ``llava-rlhf``: LLaVA-RLHF's human preferences (Sun et al. 2023): ``id``, ``image``,
  ``conversations``, ``output_1`` / ``output_2`` (``{"from": model, "value": text}``) and
  ``preference`` (1 or 2, the better output).
- ``vlfeedback``: VLFeedback (Li et al. 2023, Silkie): ``id``, ``image``, ``prompt`` and
  ``completions``, each ``{"model", "response", "annotations": {aspect: {"Rating", "Rationale"}}}``.
  Every two completions whose mean rating over the aspects differs give a pair, the higher
  chosen; equal means give none and are counted under ``"vlfeedback: tied completions"``.
- ``povid``: POVID (Zhou et al. 2024): ``id``, ``image``, ``conversations`` (human turn, then the
  chosen gpt turn) and ``rejected_conversations`` (the same human turn, then the rejected one).
- ``trl``: Hugging Face TRL's vision preference convention: ``images`` (a list), ``prompt``,
  ``chosen``, ``rejected``, each text either standard (a string) or conversational (a list of
  ``{"role", "content"}`` messages, content a string or ``[{"type": "text", "text": ...}]``).

A pair names its prompt by the row's ``prompt_id`` field where the row has one, else by the data
set's own id field (``idx`` or ``id``; TRL has none, so its rows need ``prompt_id``): the id of
the run's record holding that image and prompt. The row's image field must be present (it tells
a row of the wrong data set apart), but the image the reward model sees is the record's.
Annotators: the row's ``annotator``, else the data set's name. A malformed row fails the whole
import naming the file, line/row/entry and field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from mmrlhf.data.formats import require_field
from mmrlhf.feedback.fields import Rows, annotator_of, check_prompt_id, check_text, finite_number, text_field
from mmrlhf.types import PreferencePair

Reader = Callable[[Rows, Collection[str] | None, Counter], list[PreferencePair]]
VLFEEDBACK_TIES = "vlfeedback: tied completions"  # the key under which dropped ties are counted


def rlhf_v_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """One pair per RLAIF-V / RLHF-V row (fields in the module docstring). ``dropped`` is unused
    (every row gives a pair) and kept for the common reader signature.

    Raises ValueError naming the row and field: a missing field or image, an RLHF-V ``text``
    that is not a JSON object, an empty response, ``chosen`` equal to ``rejected``.
    """
    pairs = []
    for where, row in rows:
        prompt_id = _prompt_id(where, row, "idx", prompt_ids)
        require_field(where, row, "image")
        fields = _json_object(where, row, "text") if row.get("text") is not None else row  # RLHF-V
        text_field(where, fields, "question")
        pairs.append(provenance_pair(where, prompt_id, text_field(where, fields, "chosen"),
                           text_field(where, fields, "rejected"), annotator_of(where, row, "rlhf-v"), "rlhf-v"))
    return pairs


def llava_rlhf_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """One pair per LLaVA-RLHF row: the output named by ``preference`` chosen, the writer models
    (``output_k["from"]``) kept. ``dropped`` unused, as in :func:`rlhf_v_pairs`.

    Raises ValueError naming the row and field: a missing field or image, an output that is not
    ``{"from", "value"}`` with non-empty text, a ``preference`` other than 1 or 2.
    """
    pairs = []
    for where, row in rows:
        prompt_id = _prompt_id(where, row, "id", prompt_ids)
        require_field(where, row, "image")
        require_field(where, row, "conversations")
        outputs = [_llava_turn(where, row, f"output_{k}") for k in (1, 2)]
        preference = require_field(where, row, "preference")
        if finite_number(preference) not in (1.0, 2.0):
            raise ValueError(f"{where}: field 'preference' must be 1 or 2 (the better output), got {preference!r}")
        (chosen, chosen_model), (rejected, rejected_model) = outputs if float(preference) == 1 else outputs[::-1]
        pairs.append(provenance_pair(where, prompt_id, chosen, rejected, annotator_of(where, row, "llava-rlhf"),
                           "llava-rlhf", chosen_model=chosen_model, rejected_model=rejected_model))
    return pairs


def vlfeedback_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """Pairs from VLFeedback's per-aspect ratings (Li et al. 2023): within a row, every two
    completions with different mean ratings give a pair, the higher mean chosen; ties are
    dropped and counted in ``dropped[VLFEEDBACK_TIES]``. Each pair keeps both models, the
    per-aspect ratings (``aspect_scores``) and both rationales.

    Raises ValueError naming the row and field: a missing field or image, fewer than 2
    completions, a completion without model, response or annotations, a rating that is not a
    finite number, two completions rated on different aspects.
    """
    pairs = []
    for where, row in rows:
        prompt_id = _prompt_id(where, row, "id", prompt_ids)
        require_field(where, row, "image")
        text_field(where, row, "prompt")
        completions = require_field(where, row, "completions")
        if not isinstance(completions, list) or len(completions) < 2:
            raise ValueError(f"{where}: field 'completions' must be a list of at least 2 completions")
        rated = [_vlfeedback_completion(where, f"completions[{i}]", c) for i, c in enumerate(completions)]
        annotator = annotator_of(where, row, "vlfeedback")
        for i, a in enumerate(rated):
            for b in rated[i + 1:]:
                if set(a["ratings"]) != set(b["ratings"]):
                    raise ValueError(f"{where}: field 'completions' rates on different aspects "
                                     f"({sorted(a['ratings'])} vs {sorted(b['ratings'])})")
                if a["mean"] == b["mean"]:
                    dropped[VLFEEDBACK_TIES] += 1
                    continue
                better, worse = (a, b) if a["mean"] > b["mean"] else (b, a)
                scores = {aspect: [better["ratings"][aspect], worse["ratings"][aspect]] for aspect in better["ratings"]}
                rationale = "\n".join(f"{side} ({c['model']}) {aspect}: {text}"
                                      for side, c in (("chosen", better), ("rejected", worse))
                                      for aspect, text in c["rationales"].items())
                pairs.append(provenance_pair(where, prompt_id, better["response"], worse["response"], annotator, "vlfeedback",
                                   chosen_model=better["model"], rejected_model=worse["model"],
                                   aspect_scores=json.dumps(scores, sort_keys=True), rationale=rationale or None))
    return pairs


def povid_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """One pair per POVID row: the gpt turn of ``conversations`` chosen over that of
    ``rejected_conversations``. ``dropped`` unused, as in :func:`rlhf_v_pairs`.

    Raises ValueError naming the row and field: a missing field or image, a conversation
    without a human or gpt turn, two conversations whose human turns differ.
    """
    pairs = []
    for where, row in rows:
        prompt_id = _prompt_id(where, row, "id", prompt_ids)
        require_field(where, row, "image")
        human, chosen = _povid_turns(where, row, "conversations")
        other_human, rejected = _povid_turns(where, row, "rejected_conversations")
        if human != other_human:
            raise ValueError(f"{where}: field 'rejected_conversations' asks {other_human!r}, but "
                             f"'conversations' asks {human!r}; a pair answers one prompt")
        pairs.append(provenance_pair(where, prompt_id, chosen, rejected, annotator_of(where, row, "povid"), "povid"))
    return pairs


def trl_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """One pair per row of TRL's vision preference convention (module docstring); rows name
    their prompt by ``prompt_id``. ``dropped`` unused, as in :func:`rlhf_v_pairs`.

    Raises ValueError naming the row and field: a missing field, ``images`` not a non-empty
    list, a text that is neither a string nor messages holding text.
    """
    pairs = []
    for where, row in rows:
        prompt_id = check_prompt_id(where, text_field(where, row, "prompt_id"), prompt_ids)
        images = require_field(where, row, "images")
        if not isinstance(images, list) or not images:
            raise ValueError(f"{where}: field 'images' must be a non-empty list of images")
        _trl_text(where, row, "prompt")
        pairs.append(provenance_pair(where, prompt_id, _trl_text(where, row, "chosen"), _trl_text(where, row, "rejected"),
                           annotator_of(where, row, "trl"), "trl"))
    return pairs


READERS: dict[str, Reader] = {"rlhf-v": rlhf_v_pairs, "llava-rlhf": llava_rlhf_pairs,
                              "vlfeedback": vlfeedback_pairs, "povid": povid_pairs, "trl": trl_pairs}


def provenance_pair(where: str, prompt_id: str, chosen: str, rejected: str, annotator: str, kind: str,
          **provenance: str | None) -> PreferencePair:
    """A pair with ``source="import:<kind>"`` and ``origin=where``; ValueError if the texts are equal."""
    if chosen == rejected:
        raise ValueError(f"{where}: the chosen and rejected responses are the same text ({chosen!r}); "
                         "a preference pair needs two different responses")
    return PreferencePair(prompt_id, chosen, rejected, annotator, f"import:{kind}", origin=where, **provenance)


def _prompt_id(where: str, row: Any, id_field: str, prompt_ids: Collection[str] | None) -> str:
    """The row's ``prompt_id``, else its ``id_field`` (a number is read as its text), checked."""
    field = "prompt_id" if isinstance(row, dict) and row.get("prompt_id") is not None else id_field
    value = require_field(where, row, field)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return check_prompt_id(where, check_text(where, field, value), prompt_ids)


def _json_object(where: str, row: Any, field: str) -> dict[str, Any]:
    """row[field], the JSON text of an object, parsed; ValueError naming the row and field."""
    value = require_field(where, row, field)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: field '{field}' is not valid JSON ({err})") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"{where}: field '{field}' must be the JSON text of an object with 'question', "
                         f"'chosen' and 'rejected' (RLHF-V), got {value!r}")
    return parsed


def _llava_turn(where: str, row: Any, field: str) -> tuple[str, str | None]:
    """(text, model) of a LLaVA-RLHF output ``{"from": model, "value": text}``."""
    turn = require_field(where, row, field)
    if not isinstance(turn, dict):
        raise ValueError(f"{where}: field '{field}' must be {{\"from\": model, \"value\": text}}, got {turn!r}")
    model = turn.get("from")
    return check_text(where, f"{field}.value", turn.get("value")), model if isinstance(model, str) else None


def _vlfeedback_completion(where: str, field: str, completion: Any) -> dict[str, Any]:
    """A VLFeedback completion as {model, response, ratings {aspect: float}, rationales, mean}."""
    if not isinstance(completion, dict):
        raise ValueError(f"{where}: field '{field}' must be an object, got {type(completion).__name__}")
    model = check_text(where, f"{field}.model", completion.get("model"))
    response = check_text(where, f"{field}.response", completion.get("response"))
    annotations = completion.get("annotations")
    if not isinstance(annotations, dict) or not annotations:
        raise ValueError(f"{where}: field '{field}.annotations' must map each aspect to its Rating and Rationale")
    ratings, rationales = {}, {}
    for aspect, note in annotations.items():
        value = note.get("Rating") if isinstance(note, dict) else None
        rating = finite_number(value)
        if rating is None:
            raise ValueError(f"{where}: field '{field}.annotations.{aspect}.Rating' must be a finite number, got {value!r}")
        ratings[aspect] = rating
        if isinstance(note.get("Rationale"), str) and note["Rationale"].strip():
            rationales[aspect] = note["Rationale"]
    return {"model": model, "response": response, "ratings": ratings, "rationales": rationales,
            "mean": sum(ratings.values()) / len(ratings)}


def _povid_turns(where: str, row: Any, field: str) -> tuple[str, str]:
    """(first human turn, first gpt turn) of a LLaVA-style conversation list."""
    turns = require_field(where, row, field)
    if not isinstance(turns, list):
        raise ValueError(f"{where}: field '{field}' must be a list of {{\"from\", \"value\"}} turns")
    found = {}
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") in ("human", "gpt"):
            found.setdefault(turn["from"], turn.get("value"))
    for speaker in ("human", "gpt"):
        if speaker not in found:
            raise ValueError(f"{where}: field '{field}' has no {speaker} turn")
    return (check_text(where, f"{field}[human]", found["human"]), check_text(where, f"{field}[gpt]", found["gpt"]))


def _trl_text(where: str, row: Any, field: str) -> str:
    """A TRL text: a string, or the text parts of a list of messages joined by blank lines."""
    value = require_field(where, row, field)
    if isinstance(value, str):
        return check_text(where, field, value)
    if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
        raise ValueError(f"{where}: field '{field}' must be text or a list of {{\"role\", \"content\"}} messages")
    parts = []
    for message in value:
        content = message["content"]
        items = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        parts += [item if isinstance(item, str) else item.get("text") for item in items
                  if isinstance(item, str) or (isinstance(item, dict) and item.get("type") == "text")]
    return check_text(where, field, "\n\n".join(p for p in parts if isinstance(p, str) and p.strip()))
