"""What the labeling page does, without Ray: who sees what next, and checking and storing answers.

Each annotator gets every item of a tasks folder once, in an order and with sides drawn from a
generator seeded by (``seed``, annotator), so any replica, or a replica started after another
was killed, computes the same queue; progress is read back from the answers on disk, never held
in memory. In pairwise mode about ``repeat_fraction`` of the items (at least one) come back
``repeat_gap`` items later with their sides swapped, to measure each annotator's
self-consistency; gold items (``known_better`` set) score annotators
(:func:`mmrlhf.feedback.answers.annotator_stats`). Ranking and rating modes show all K
responses of a prompt in a shuffled order.

Pairwise choices name the sides as shown (A = left): A≫B, A>B, tie, B>A, B≫A, can't judge;
the answer stores them resolved to the task's ``a`` / ``b``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmrlhf.feedback.answers import AnswerStore, answer_key
from mmrlhf.feedback.tasks import TaskSet

CHOICES = {"A>>B": ("left", 2), "A>B": ("left", 1), "tie": ("tie", 0), "B>A": ("right", 1), "B>>A": ("right", 2),
           "cant_judge": ("cant_judge", None)}  # choice as shown -> (side, strength)
MAX_ANNOTATOR_CHARS, MAX_RATIONALE_CHARS, MAX_SECONDS = 100, 2000, 86_400.0
RATINGS = range(1, 6)


@dataclass(frozen=True)
class Item:
    """One thing to judge: a prompt, its image and 2 (pairwise) or K responses."""

    item_id: str
    prompt_id: str
    prompt: str
    image_png: bytes
    responses: tuple[str, ...]
    known_better: str | None  # "a" / "b" on a gold item


@dataclass(frozen=True)
class Showing:
    """An item as one annotator sees it: response indices in display order (left first)."""

    item_id: str
    order: tuple[int, ...]
    repeat: bool


def items_of(tasks: TaskSet) -> dict[str, Item]:
    """The items of a tasks folder: a pairwise row, a ranking row, or a prompt's rating rows."""
    items: dict[str, Item] = {}
    for row in tasks.rows:
        if tasks.kind == "rating":
            old = items.get(row["prompt_id"])
            responses = (old.responses if old else ()) + (row["response"],)
            items[row["prompt_id"]] = Item(row["prompt_id"], row["prompt_id"], row["prompt"], tasks.image_bytes(row),
                                           responses, None)
        else:
            responses = (row["response_a"], row["response_b"]) if tasks.kind == "pairwise" else tuple(row["responses"])
            items[row["task_id"]] = Item(row["task_id"], row["prompt_id"], row["prompt"], tasks.image_bytes(row),
                                         responses, row.get("known_better"))
    return items


class LabelingSession:
    """Queues, page payloads and answer checks for one tasks folder and its answers."""

    def __init__(self, tasks: TaskSet, store: AnswerStore, seed: int = 0, repeat_fraction: float = 0.05,
                 repeat_gap: int = 2) -> None:
        if not 0 <= repeat_fraction <= 1:
            raise ValueError(f"repeat_fraction={repeat_fraction}, expected a share in [0, 1]")
        self.mode = tasks.kind
        self.items = items_of(tasks)
        self.store = store
        self.seed, self.repeat_fraction, self.repeat_gap = seed, repeat_fraction, repeat_gap

    def queue(self, annotator: str) -> list[Showing]:
        """Everything ``annotator`` will be shown, in order (module docstring)."""
        digest = int.from_bytes(hashlib.sha256(annotator.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, digest])
        ids = list(self.items)
        showings = [Showing(ids[i], tuple(int(j) for j in rng.permutation(len(self.items[ids[i]].responses))), False)
                    for i in rng.permutation(len(ids))]
        if self.mode != "pairwise" or self.repeat_fraction == 0 or len(showings) < 2:
            return showings
        n_repeats = max(1, round(self.repeat_fraction * len(showings)))
        candidates = max(1, len(showings) - self.repeat_gap)  # repeats come after other items when possible
        picks = sorted(rng.choice(candidates, size=min(n_repeats, candidates), replace=False), reverse=True)
        for pos in picks:  # from the back, so earlier positions stay put
            first = showings[pos]
            showings.insert(min(pos + 1 + self.repeat_gap, len(showings)),
                            Showing(first.item_id, first.order[::-1], True))
        return showings

    def next_item(self, annotator: str) -> dict[str, Any]:
        """The page's next payload for ``annotator``: ``{"done", "answered", "total", "item"}``.

        ``item`` (None when done): ``item_id``, ``repeat``, ``shown`` (indices, left first),
        ``prompt``, ``image`` (a data: URL) and ``responses`` in display order, and ``mode``;
        never the gold answer or which policy wrote a response.
        """
        annotator = _annotator(annotator)
        queue = self.queue(annotator)
        answered = {answer_key(a) for a in self.store.read() if a["annotator"] == annotator}
        pending = [s for s in queue if (annotator, s.item_id, s.repeat) not in answered]
        payload = {"done": not pending, "answered": len(queue) - len(pending), "total": len(queue), "item": None}
        if pending:
            showing, item = pending[0], self.items[pending[0].item_id]
            payload["item"] = {
                "item_id": item.item_id, "repeat": showing.repeat, "shown": list(showing.order), "mode": self.mode,
                "prompt": item.prompt, "responses": [item.responses[i] for i in showing.order],
                "image": "data:image/png;base64," + base64.b64encode(item.image_png).decode()}
        return payload

    def record(self, submission: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Check a page submission, resolve its sides and store it; returns (newly saved, answer).

        ``submission``: ``annotator``, ``item_id``, ``repeat``, ``shown`` (as the page was given),
        ``seconds``, ``page_version``, optional ``rationale``, and by mode ``choice`` (one of
        :data:`CHOICES`), ``ranking`` (response indices best first) or ``ratings`` (1–5 per
        response, task order). A showing already answered is not stored again (False, the stored
        answer). Raises ValueError naming the field and what was expected.
        """
        annotator = _annotator(submission.get("annotator"))
        item_id, repeat = submission.get("item_id"), submission.get("repeat")
        if item_id not in self.items:
            raise ValueError(f"item_id {item_id!r} is not a task of this page")
        if not isinstance(repeat, bool):
            raise ValueError(f"repeat must be true or false, got {repeat!r}")
        showing = next((s for s in self.queue(annotator) if s.item_id == item_id and s.repeat == repeat), None)
        if showing is None:
            raise ValueError(f"item {item_id} is never shown again to {annotator!r} (repeat={repeat})")
        if list(submission.get("shown") or []) != list(showing.order):
            raise ValueError(f"shown {submission.get('shown')!r}: the sides differ from those the page was given "
                             f"({list(showing.order)}) for item {item_id}")
        stored = {answer_key(a): a for a in self.store.read()}
        if (annotator, item_id, repeat) in stored:
            return False, stored[(annotator, item_id, repeat)]
        item = self.items[item_id]
        answer = {"answer_id": uuid.uuid4().hex, "submitted_at": time.time(), "annotator": annotator,
                  "item_id": item_id, "prompt_id": item.prompt_id, "mode": self.mode, "repeat": repeat,
                  "responses": list(item.responses), "shown": list(showing.order),
                  **_judgement(self.mode, submission, item, showing),
                  "rationale": _rationale(submission.get("rationale")), "seconds": _seconds(submission.get("seconds")),
                  "page_version": _page_version(submission.get("page_version"))}
        self.store.append(answer)
        return True, answer


def _judgement(mode: str, submission: dict[str, Any], item: Item, showing: Showing) -> dict[str, Any]:
    """The mode's fields of an answer, sides resolved; ValueError names a bad field."""
    blank = dict.fromkeys(("choice", "preferred", "strength", "chosen", "rejected", "ranking", "ratings",
                           "gold_correct"))
    k = len(item.responses)
    if mode == "ranking":
        ranking = submission.get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(k)):
            raise ValueError(f"ranking {ranking!r}: expected each response index 0..{k - 1} once, best first")
        return {**blank, "ranking": [item.responses[i] for i in ranking]}
    if mode == "rating":
        ratings = submission.get("ratings")
        if not isinstance(ratings, list) or len(ratings) != k or any(r not in RATINGS for r in ratings):
            raise ValueError(f"ratings {ratings!r}: expected {k} whole numbers from 1 to 5, in task order")
        return {**blank, "ratings": ratings}
    choice = submission.get("choice")
    if choice not in CHOICES:
        raise ValueError(f"choice {choice!r}: expected one of {', '.join(CHOICES)}")
    side, strength = CHOICES[choice]
    if side in ("left", "right"):
        better = showing.order[0 if side == "left" else 1]
        preferred = "ab"[better]
        chosen, rejected = item.responses[better], item.responses[1 - better]
    else:
        preferred, chosen, rejected = side, None, None
    gold = None if item.known_better is None or preferred == "cant_judge" else preferred == item.known_better
    return {**blank, "choice": choice, "preferred": preferred, "strength": strength, "chosen": chosen,
            "rejected": rejected, "gold_correct": gold}


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ANNOTATOR_CHARS or not value.isprintable():
        raise ValueError(f"annotator {value!r}: expected a printable id of 1 to {MAX_ANNOTATOR_CHARS} characters")
    return value.strip()


def _rationale(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_RATIONALE_CHARS:
        raise ValueError(f"rationale: expected text of at most {MAX_RATIONALE_CHARS} characters")
    return value.strip()


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"seconds {value!r}: expected a number of seconds from 0 to {MAX_SECONDS:g}")
    return float(value)


def _page_version(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValueError(f"page_version {value!r}: expected the page's version text")
    return value
