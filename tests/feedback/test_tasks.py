"""Comparison tasks: rows per kind, gold items, the folder on disk, the HTML page, the import round trip."""

import json

import numpy as np
import pytest

from mmrlhf.data.media import encode_png
from mmrlhf.feedback.importer import read_feedback_file
from mmrlhf.feedback.sampling import distinct_responses
from mmrlhf.feedback.tasks import PromptSamples, load_tasks, task_rows, write_tasks

PNG = encode_png(np.zeros((4, 4), dtype=np.uint8))


def prompts(gold=True):
    return [PromptSamples("p0", "What number?", PNG, ["one", "two", "<b>three</b>"], [1.0, 0.5, 0.5] if gold else None),
            PromptSamples("p1", "What number?", PNG, ["four", "five"], [0.2, 0.9] if gold else None)]


def test_distinct_responses_drop_repeats_and_blanks_keeping_order():
    assert distinct_responses(["b", "a", "b", " ", "", "a", "c"]) == ["b", "a", "c"]


def test_rows_per_kind_leave_the_answers_blank():
    rng = np.random.default_rng(0)
    ranking = task_rows("ranking", prompts(), rng)
    assert [(r["task_id"], r["responses"], r["annotator"]) for r in ranking] == [
        ("p0", ["one", "two", "<b>three</b>"], None), ("p1", ["four", "five"], None)]
    rating = task_rows("rating", prompts(), rng)
    assert [(r["task_id"], r["response"], r["rating"], r["gold"]) for r in rating] == [
        ("p0/0", "one", None, 1.0), ("p0/1", "two", None, 0.5), ("p0/2", "<b>three</b>", None, 0.5),
        ("p1/0", "four", None, 0.2), ("p1/1", "five", None, 0.9)]
    pairwise = task_rows("pairwise", prompts(), rng, gold_fraction=0.0)
    assert [(r["response_a"], r["response_b"], r["chosen"], r["rejected"]) for r in pairwise] == [
        ("one", "two", None, None), ("one", "<b>three</b>", None, None), ("two", "<b>three</b>", None, None),
        ("four", "five", None, None)]
    assert {r["image"] for r in pairwise} == {"images/0.png", "images/1.png"}


def test_gold_items_are_a_share_of_pairs_with_unequal_gold_and_know_the_better_side():
    rows = task_rows("pairwise", prompts(), np.random.default_rng(0), gold_fraction=0.5)
    known = {r["task_id"]: r["known_better"] for r in rows if r["known_better"]}
    # unequal gold: p0/0-1 (a), p0/0-2 (a), p1/0-1 (b); p0/1-2 ties. round(0.5 * 3) = 2 of them
    assert len(known) == 2 and set(known.items()) <= {("p0/0-1", "a"), ("p0/0-2", "a"), ("p1/0-1", "b")}
    one = task_rows("pairwise", prompts(), np.random.default_rng(0), gold_fraction=0.01)
    assert sum(r["known_better"] is not None for r in one) == 1  # at least one gold item
    assert all(r["known_better"] is None for r in task_rows("pairwise", prompts(gold=False), np.random.default_rng(0)))


@pytest.mark.parametrize("bad, message", [
    (PromptSamples("p", "q", PNG, ["a"]), "expected at least 2 distinct responses"),
    (PromptSamples("p", "q", PNG, ["a", "a"]), "expected at least 2 distinct responses"),
    (PromptSamples("p", "q", PNG, ["a", "b"], gold=[1.0]), "1 gold for 2 responses"),
])
def test_bad_prompt_samples_are_named(bad, message):
    with pytest.raises(ValueError, match=f"prompt p: {message}"):
        task_rows("ranking", [bad], np.random.default_rng(0))


def test_folder_holds_parquet_jsonl_images_and_an_escaped_page_without_hidden_fields(tmp_path):
    rows = task_rows("pairwise", prompts(), np.random.default_rng(0), gold_fraction=1.0)
    out = write_tasks(tmp_path / "tasks", "pairwise", prompts(), rows, {"policy": "sft"})
    tasks = load_tasks(out)
    assert tasks.kind == "pairwise" and tasks.rows == rows and tasks.meta["n_prompts"] == 2
    assert [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()] == rows
    assert tasks.image_bytes(rows[0]) == PNG and (out / "images" / "1.png").read_bytes() == PNG
    page = (out / "tasks.html").read_text()
    assert "&lt;b&gt;three&lt;/b&gt;" in page and "<b>three" not in page
    assert page.count("data:image/png;base64,") == len(rows) and "known_better" not in page
    with pytest.raises(FileExistsError, match="may hold answers"):
        write_tasks(out, "pairwise", prompts(), rows, {})


def test_filled_in_task_files_import_as_pairs(tmp_path):
    out = write_tasks(tmp_path / "tasks", "ranking", prompts(), task_rows("ranking", prompts(), np.random.default_rng(0)), {})
    filled = [dict(row, responses=row["responses"][::-1], annotator="ann") for row in load_tasks(out).rows]
    path = tmp_path / "filled.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in filled))
    pairs = read_feedback_file(path, "ranking", {"p0", "p1"})
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator) for p in pairs] == [
        ("p0", "<b>three</b>", "two", "ann"), ("p0", "<b>three</b>", "one", "ann"), ("p0", "two", "one", "ann"),
        ("p1", "five", "four", "ann")]
    unfilled = tmp_path / "unfilled.jsonl"
    rating = write_tasks(tmp_path / "rating", "rating", prompts(), task_rows("rating", prompts(), np.random.default_rng(0)), {})
    unfilled.write_text((rating / "tasks.jsonl").read_text())
    with pytest.raises(ValueError, match=r"unfilled.jsonl line 1: missing field 'rating'"):
        read_feedback_file(unfilled, "rating")
