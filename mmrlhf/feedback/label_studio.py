"""Label Studio: our comparison tasks as Label Studio tasks, and its annotations back as pairs.

Label Studio (HumanSignal) is where many teams already label. ``export_label_studio`` turns a
tasks folder (:mod:`mmrlhf.feedback.tasks`, pairwise or ranking) into what a Label Studio
project imports: ``label_studio/tasks.json`` (one ``{"data": {...}}`` per task, the image
inlined as a ``data:`` URL, the hidden gold/origin fields left out) and
``label_studio/config.xml`` (the labeling interface: ``<Pairwise>`` over the two responses,
or a ``<List>`` of the responses ordered with ``<Ranker>``; an optional ``<TextArea>``
rationale). The project's JSON export (``Export → JSON``: the tasks with their
``annotations``) comes back through ``mmrlhf feedback import <file> --kind label-studio``.

The shapes follow Label Studio's documented JSON (tasks, annotations with ``result`` regions;
``pairwise`` regions ``{"selected": "left" | "right"}``, ``ranker`` regions
``{"ranker": {<name>: [item ids, best first]}}``; ``completed_by`` a user id, or a user object in
some exports) rather than ``label-studio-sdk``'s classes: the SDK pins and pulls in heavy
dependencies (opencv, datamodel-code-generator, nltk) that the rest of mmrlhf never needs.
Cancelled (skipped) annotations and annotations without a choice give no pair and are counted.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mmrlhf.data.formats import require_field
from mmrlhf.feedback.fields import Rows, check_prompt_id, check_text
from mmrlhf.feedback.published import provenance_pair
from mmrlhf.feedback.tasks import HIDDEN_FIELDS, load_tasks
from mmrlhf.types import PreferencePair

EXPORT_DIR, TASKS_FILE, CONFIG_FILE = "label_studio", "tasks.json", "config.xml"
PAIRWISE, RANKER, TEXTAREA = "pairwise", "ranker", "textarea"  # result region types
CANCELLED = "label-studio: cancelled annotations"
NO_CHOICE = "label-studio: annotations without a choice"

_HEAD = '<View>\n  <Image name="image" value="$image"/>\n  <Header value="$prompt"/>\n'
_RATIONALE = '  <TextArea name="rationale" toName="image" placeholder="Why? (optional)"/>\n</View>\n'
CONFIGS = {
    "pairwise": _HEAD + '  <Text name="response_a" value="$response_a"/>\n'
                        '  <Text name="response_b" value="$response_b"/>\n'
                        '  <Pairwise name="comparison" toName="response_a,response_b"/>\n' + _RATIONALE,
    "ranking": _HEAD + '  <List name="responses" value="$items" title="Responses"/>\n'
                       '  <Ranker name="rank" toName="responses"/>\n' + _RATIONALE,
}


def label_studio_tasks(tasks_dir: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(kind, Label Studio tasks) of a pairwise or ranking tasks folder (module docstring).

    Each task's ``data`` holds ``task_id``, ``prompt_id``, ``prompt``, ``image`` (a PNG
    ``data:`` URL) and ``response_a`` / ``response_b`` (pairwise) or ``items`` (ranking:
    ``[{"id": "r<k>", "title", "body": text}]``, k the response's index). Raises ValueError for a
    rating tasks folder (Label Studio rates one response per task; use the labeling page),
    FileNotFoundError / ValueError as :func:`mmrlhf.feedback.tasks.load_tasks`.
    """
    tasks = load_tasks(tasks_dir)
    if tasks.kind not in CONFIGS:
        raise ValueError(f"{tasks_dir}: {tasks.kind} tasks have no Label Studio export; export pairwise or "
                         "ranking tasks, or serve these on the labeling page")
    out = []
    for row in tasks.rows:
        data = {k: v for k, v in row.items() if k not in HIDDEN_FIELDS and k not in ("annotator", "chosen", "rejected")}
        data["image"] = "data:image/png;base64," + base64.b64encode(tasks.image_bytes(row)).decode()
        if tasks.kind == "ranking":
            data["items"] = [{"id": f"r{k}", "title": f"Response {k + 1}", "body": text}
                             for k, text in enumerate(data.pop("responses"))]
        out.append({"data": data})
    return tasks.kind, out


def export_label_studio(tasks_dir: str | Path) -> Path:
    """Write ``<tasks_dir>/label_studio/{tasks.json, config.xml}``; returns that folder."""
    kind, tasks = label_studio_tasks(tasks_dir)
    folder = Path(tasks_dir) / EXPORT_DIR
    folder.mkdir(exist_ok=True)
    (folder / TASKS_FILE).write_text(json.dumps(tasks), encoding="utf-8")
    (folder / CONFIG_FILE).write_text(CONFIGS[kind], encoding="utf-8")
    return folder


def label_studio_pairs(rows: Rows, prompt_ids: Collection[str] | None, dropped: Counter) -> list[PreferencePair]:
    """Pairs from a Label Studio JSON export of tasks made by :func:`label_studio_tasks`.

    A pairwise annotation gives one pair (``left`` is ``response_a``); a ranking annotation
    gives every pair of its order, as :func:`mmrlhf.feedback.importer.ranking_pairs`. The
    annotator is ``label-studio:<user id or email>``, a ``textarea`` region the rationale.
    Cancelled annotations and ones without a pairwise/ranker region are counted in
    ``dropped`` under :data:`CANCELLED` / :data:`NO_CHOICE`.
    Raises ValueError naming the task, annotation and field: a missing ``data`` field, a
    selection other than left/right, a ranking that is not an order of the task's items.
    """
    pairs = []
    for where, task in rows:
        data = require_field(where, task, "data")
        prompt_id = check_prompt_id(where, check_text(where, "data.prompt_id", data.get("prompt_id")), prompt_ids)
        annotations = require_field(where, task, "annotations")
        if not isinstance(annotations, list):
            raise ValueError(f"{where}: field 'annotations' must be a list")
        for j, annotation in enumerate(annotations):
            at = f"{where} annotation {j}"
            if not isinstance(annotation, dict):
                raise ValueError(f"{at}: expected an object, got {type(annotation).__name__}")
            if annotation.get("was_cancelled"):
                dropped[CANCELLED] += 1
                continue
            regions = {r.get("type"): r.get("value") for r in require_field(at, annotation, "result")
                       if isinstance(r, dict)}
            if PAIRWISE in regions:
                orders = [_pairwise_order(at, data, regions[PAIRWISE])]
            elif RANKER in regions:
                orders = list(itertools.combinations(_ranked_texts(at, data, regions[RANKER]), 2))
            else:
                dropped[NO_CHOICE] += 1
                continue
            annotator, rationale = _annotator(annotation), _rationale(regions.get(TEXTAREA))
            pairs += [provenance_pair(at, prompt_id, chosen, rejected, annotator, "label-studio", rationale=rationale)
                      for chosen, rejected in orders]
    return pairs


def _pairwise_order(at: str, data: dict[str, Any], value: Any) -> tuple[str, str]:
    """(chosen, rejected) of a pairwise region ``{"selected": "left" | "right"}``."""
    selected = value.get("selected") if isinstance(value, dict) else None
    if selected not in ("left", "right"):
        raise ValueError(f"{at}: field 'result.pairwise.selected' must be 'left' or 'right', got {selected!r}")
    a, b = (check_text(at, f"data.{k}", data.get(k)) for k in ("response_a", "response_b"))
    return (a, b) if selected == "left" else (b, a)


def _ranked_texts(at: str, data: dict[str, Any], value: Any) -> list[str]:
    """The items' texts best first, from a ranker region ``{"ranker": {name: [ids]}}``."""
    items = data.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        raise ValueError(f"{at}: field 'data.items' must be a list of {{\"id\", \"body\"}} items")
    body = {item["id"]: check_text(at, f"data.items[{item['id']}].body", item.get("body")) for item in items}
    lists = list(value["ranker"].values()) if isinstance(value, dict) and isinstance(value.get("ranker"), dict) else []
    if len(lists) != 1 or not isinstance(lists[0], list):
        raise ValueError(f"{at}: field 'result.ranker' must hold one ranked list of item ids, got {value!r}")
    if sorted(map(str, lists[0])) != sorted(body):
        raise ValueError(f"{at}: field 'result.ranker' orders {lists[0]}, not each of the items {sorted(body)} once")
    return [body[item_id] for item_id in lists[0]]


def _annotator(annotation: dict[str, Any]) -> str:
    """``label-studio:<email or id>`` from ``completed_by`` (an id or a user object)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"label-studio:{who if who is not None else 'anonymous'}"


def _rationale(value: Any) -> str | None:
    """The text of a textarea region ``{"text": [lines]}``, or None."""
    lines = value.get("text") if isinstance(value, dict) else None
    text = "\n".join(line for line in lines if isinstance(line, str)) if isinstance(lines, list) else ""
    return text.strip() or None
