"""The labeling page's logic without Ray: queues, sides, repeats, gold items, answers on disk, pairs."""

import threading

import numpy as np
import pytest

from mmrlhf.data.media import encode_png
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore, annotator_stats, answers_to_pairs, read_answer_pairs
from mmrlhf.feedback.labeling import LabelingSession
from mmrlhf.feedback.tasks import PromptSamples, load_tasks, task_rows, write_tasks

PNG = encode_png(np.zeros((4, 4), dtype=np.uint8))


def make_tasks(tmp_path, kind, gold_fraction=0.0):
    prompts = [PromptSamples(f"p{i}", f"prompt {i}", PNG, [f"r{i}a", f"r{i}b", f"r{i}c"], [1.0, 0.5, 0.2])
               for i in range(2)]
    rows = task_rows(kind, prompts, np.random.default_rng(0), gold_fraction)
    return write_tasks(tmp_path / kind, kind, prompts, rows, {})


def session(tasks_dir, **kwargs):
    return LabelingSession(load_tasks(tasks_dir), AnswerStore(tasks_dir / ANSWERS_DIR), **kwargs)


def submit(s, annotator, payload, **fields):
    item = payload["item"]
    return s.record({"annotator": annotator, "item_id": item["item_id"], "repeat": item["repeat"],
                     "shown": item["shown"], "seconds": 1.5, "page_version": "v1", **fields})


def test_queue_is_the_same_for_every_replica_and_repeats_swap_sides_later(tmp_path):
    tasks = make_tasks(tmp_path, "pairwise")  # 6 pairs
    a, b = session(tasks, seed=3), session(tasks, seed=3)
    queue = a.queue("ann")
    assert queue == b.queue("ann") and queue != a.queue("bob")
    firsts = [s for s in queue if not s.repeat]
    assert sorted(s.item_id for s in firsts) == sorted(a.items)
    (repeat,) = [s for s in queue if s.repeat]  # max(1, round(0.05 * 6)) = 1
    first = next(s for s in firsts if s.item_id == repeat.item_id)
    assert repeat.order == first.order[::-1]
    assert queue.index(repeat) - queue.index(first) == 3  # two other items in between
    assert all(not s.repeat for s in session(make_tasks(tmp_path, "ranking")).queue("ann"))


def test_answers_resolve_sides_score_gold_and_advance_the_queue(tmp_path):
    tasks = make_tasks(tmp_path, "pairwise", gold_fraction=1.0)  # every pair with unequal gold is a gold item
    s = session(tasks)
    total = len(s.queue("ann"))
    seen = []
    while not (payload := s.next_item("ann"))["done"]:
        item = payload["item"]
        assert payload["answered"] == len(seen) and payload["total"] == total
        assert item["image"].startswith("data:image/png;base64,") and "known_better" not in item
        # the annotator always prefers the shown-left response, strongly
        saved, answer = submit(s, "ann", payload, choice="A>>B", rationale="  left looks right ")
        left = item["responses"][0]
        assert saved and answer["chosen"] == left and answer["strength"] == 2 and answer["rationale"] == "left looks right"
        assert answer["preferred"] == "ab"[item["shown"][0]] and answer["rejected"] == item["responses"][1]
        known = s.items[item["item_id"]].known_better
        assert answer["gold_correct"] == (answer["preferred"] == known)
        seen.append(answer)
    stored = s.store.read()
    assert [a["answer_id"] for a in stored] == [a["answer_id"] for a in seen]
    stats = annotator_stats(stored)["ann"]
    assert stats["answers"] == total and stats["repeats"] == 1
    assert stats["self_consistency"] == 0.0  # "always left" flips on the swapped repeat
    assert stats["gold_items"] == 7 and stats["gold_accuracy"] == sum(a["gold_correct"] for a in seen) / 7
    pairs = answers_to_pairs(stored)
    assert len(pairs) == 6 and {p.source for p in pairs} == {"labeling-page:pairwise"}  # repeats give no pair


def test_resubmitted_showing_is_stored_once_and_bad_fields_are_named(tmp_path):
    s = session(make_tasks(tmp_path, "pairwise"))
    payload = s.next_item("ann")
    assert submit(s, "ann", payload, choice="tie")[0]
    saved, again = submit(s, "ann", payload, choice="A>B")
    assert not saved and again["choice"] == "tie" and len(s.store.read()) == 1
    payload = s.next_item("ann")
    bad = {"choice": "A>>>B"}
    with pytest.raises(ValueError, match=r"choice 'A>>>B': expected one of A>>B, A>B, tie, B>A, B>>A, cant_judge"):
        submit(s, "ann", payload, **bad)
    with pytest.raises(ValueError, match="the sides differ from those the page was given"):
        s.record({**payload["item"], "annotator": "ann", "shown": payload["item"]["shown"][::-1], "choice": "tie",
                  "seconds": 1.0, "page_version": "v1"})
    with pytest.raises(ValueError, match="seconds -1: expected a number of seconds"):
        submit(s, "ann", payload, choice="tie", seconds=-1)
    with pytest.raises(ValueError, match="annotator '': expected a printable id"):
        s.next_item("")
    with pytest.raises(ValueError, match="item_id 'nope' is not a task"):
        s.record({"annotator": "ann", "item_id": "nope"})


def test_ranking_and_rating_answers_give_pairs_as_feedback_import_does(tmp_path):
    ranking = session(make_tasks(tmp_path, "ranking"))
    while not (payload := ranking.next_item("ann"))["done"]:
        submit(ranking, "ann", payload, ranking=[2, 0, 1])  # task indices, best first
    pairs = read_answer_pairs(tmp_path / "ranking", {"p0", "p1"})
    assert sorted((p.prompt_id, p.chosen, p.rejected) for p in pairs) == sorted(
        (f"p{i}", better, worse) for i in range(2)
        for better, worse in [(f"r{i}c", f"r{i}a"), (f"r{i}c", f"r{i}b"), (f"r{i}a", f"r{i}b")])
    rating = session(make_tasks(tmp_path, "rating"))
    while not (payload := rating.next_item("ann"))["done"]:
        assert len(payload["item"]["responses"]) == 3  # a prompt's rating rows form one item
        with pytest.raises(ValueError, match=r"ratings \[1, 6, 2\]: expected 3 whole numbers from 1 to 5"):
            submit(rating, "ann", payload, ratings=[1, 6, 2])
        submit(rating, "ann", payload, ratings=[5, 5, 1])  # a tie gives no pair
    pairs = read_answer_pairs(tmp_path / "rating", {"p0", "p1"})
    assert sorted((p.chosen, p.rejected, p.source) for p in pairs) == sorted(
        (f"r{i}{x}", f"r{i}c", "labeling-page:rating") for i in range(2) for x in "ab")
    with pytest.raises(FileNotFoundError, match="no answers yet"):
        read_answer_pairs(tmp_path / "pairwise-none")


def test_concurrent_appends_lose_nothing_and_leave_no_partial_file(tmp_path):
    store = AnswerStore(tmp_path / "answers")
    s = session(make_tasks(tmp_path, "pairwise"))
    answers = []
    for n in range(8):
        payload = s.next_item(f"ann{n}")
        answers.append(submit(s, f"ann{n}", payload, choice="B>A")[1])
    store = AnswerStore(tmp_path / "concurrent")
    threads = [threading.Thread(target=store.append, args=(a,)) for a in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a["answer_id"] for a in store.read()) == sorted(a["answer_id"] for a in answers)
    assert not list((tmp_path / "concurrent").glob(".*")) and len(list((tmp_path / "concurrent").iterdir())) == 8
    with pytest.raises(ValueError, match="does not fit the answer schema"):
        store.append({**answers[0], "seconds": "soon"})
    assert len(store.read()) == 8
