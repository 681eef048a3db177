"""Human feedback → preference pairs: each kind against a slow obvious reference, and bad input."""

import collections
import csv
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrlhf.feedback.fields import ANONYMOUS
from mmrlhf.feedback.importer import (
    pairwise_pairs,
    ranking_pairs,
    rating_pairs,
    read_feedback_file,
)

PROMPTS = {"p0", "p1", "p2"}


def _rows(dicts):
    return [(f"row {i}", d) for i, d in enumerate(dicts)]


def _counts(pairs):
    return collections.Counter((p.prompt_id, p.chosen, p.rejected, p.annotator) for p in pairs)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_pairwise_rows_become_pairs_with_default_annotator_and_source():
    rng = np.random.default_rng(0)
    dicts = [{"prompt_id": f"p{rng.integers(3)}", "chosen": f"c{i}", "rejected": f"r{i}"}
             | ({"annotator": f"a{rng.integers(2)}"} if rng.random() < 0.5 else {}) for i in range(30)]
    pairs = pairwise_pairs(_rows(dicts), PROMPTS)
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator) for p in pairs] == [
        (d["prompt_id"], d["chosen"], d["rejected"], d.get("annotator", ANONYMOUS)) for d in dicts]
    assert {p.source for p in pairs} == {"import:pairwise"}


def test_ranking_gives_every_pair_ranked_above_below_on_random_rankings():
    rng = np.random.default_rng(1)
    dicts = []
    for _ in range(40):
        k = int(rng.integers(2, 7))
        texts = [f"t{j}" for j in rng.permutation(10)[:k]]
        dicts.append({"prompt_id": f"p{rng.integers(3)}", "responses": texts, "annotator": f"a{rng.integers(3)}"})
    pairs = ranking_pairs(_rows(dicts), PROMPTS)
    # reference: every ordered pair of the row whose first element is ranked higher
    expected = collections.Counter(
        (d["prompt_id"], a, b, d["annotator"]) for d in dicts
        for a, b in itertools.permutations(d["responses"], 2)
        if d["responses"].index(a) < d["responses"].index(b))
    assert _counts(pairs) == expected
    assert len(pairs) == sum(len(d["responses"]) * (len(d["responses"]) - 1) // 2 for d in dicts)
    assert {p.source for p in pairs} == {"import:ranking"}


def test_ratings_give_a_pair_for_every_two_responses_rated_differently_by_one_annotator():
    rng = np.random.default_rng(2)
    dicts = []
    for prompt_id, annotator in itertools.product(sorted(PROMPTS), ["a0", "a1", None]):
        for text in rng.permutation(8)[: rng.integers(1, 6)]:
            row = {"prompt_id": prompt_id, "response": f"t{text}", "rating": int(rng.integers(1, 4))}
            dicts.append(row | ({"annotator": annotator} if annotator else {}))
    order = rng.permutation(len(dicts))  # groups interleaved in the file
    dicts = [dicts[i] for i in order]
    pairs = rating_pairs(_rows(dicts), PROMPTS)
    # reference: a double loop over all rows, no grouping
    expected = collections.Counter(
        (a["prompt_id"], a["response"], b["response"], a.get("annotator", ANONYMOUS))
        for a in dicts for b in dicts
        if a["prompt_id"] == b["prompt_id"] and a.get("annotator") == b.get("annotator")
        and a["rating"] > b["rating"])
    assert _counts(pairs) == expected
    ties = sum(a is not b and a["prompt_id"] == b["prompt_id"] and a.get("annotator") == b.get("annotator")
               and a["rating"] == b["rating"] for a in dicts for b in dicts)
    assert ties > 0 and len(pairs) > 10  # the draw exercises both cases
    assert {p.source for p in pairs} == {"import:rating"}


def test_equal_ratings_and_ratings_of_different_annotators_give_no_pair():
    dicts = [{"prompt_id": "p0", "response": "x", "rating": 3, "annotator": "ann"},
             {"prompt_id": "p0", "response": "y", "rating": 3.0, "annotator": "ann"},
             {"prompt_id": "p0", "response": "z", "rating": 5, "annotator": "bob"}]
    assert rating_pairs(_rows(dicts)) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_file_format_gives_the_same_pairs(tmp_path, suffix):
    rows = [{"prompt_id": "007", "response": "one two", "rating": "4.5", "annotator": "17"},
            {"prompt_id": "007", "response": "NA", "rating": "2", "annotator": "17"}]
    path = tmp_path / f"fb{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".csv":
        write_csv(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    pairs = read_feedback_file(path, "rating", {"007"})
    # CSV text is read as text: "007" and "17" keep their zeros and type, "NA" is not null
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator) for p in pairs] == [("007", "one two", "NA", "17")]


def test_ranking_lists_read_from_parquet(tmp_path):
    path = tmp_path / "rank.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "p1", "responses": ["a", "b", "c"]}]), path)
    pairs = read_feedback_file(path, "ranking", PROMPTS)
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]


GOOD = {"pairwise": {"prompt_id": "p0", "chosen": "a", "rejected": "b"},
        "ranking": {"prompt_id": "p0", "responses": ["a", "b"]},
        "rating": {"prompt_id": "p0", "response": "a", "rating": 1}}


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("pairwise", {"prompt_id": "p0", "chosen": "a"}, r"line 2: missing field 'rejected'"),
        ("pairwise", {"chosen": "a", "rejected": "b"}, r"line 2: missing field 'prompt_id'"),
        ("pairwise", {"prompt_id": "p0", "chosen": "  ", "rejected": "b"},
         r"line 2: field 'chosen' must be non-empty text, got '  '"),
        ("pairwise", {"prompt_id": "p0", "chosen": "a", "rejected": 3},
         r"line 2: field 'rejected' must be non-empty text, got 3"),
        ("pairwise", {"prompt_id": "p0", "chosen": "a", "rejected": "a"},
         r"line 2: 'chosen' and 'rejected' are the same text"),
        ("pairwise", {"prompt_id": "p9", "chosen": "a", "rejected": "b"},
         r"line 2: prompt_id 'p9' is not in the run's feedback split"),
        ("pairwise", ["p0", "a", "b"], r"line 2: expected a JSON object, got list"),
        ("ranking", {"prompt_id": "p0", "responses": ["a"]},
         r"line 2: field 'responses' must be a list of at least 2 responses, best first; got 1 response"),
        ("ranking", {"prompt_id": "p0", "responses": "a > b"},
         r"line 2: field 'responses' must be a list .* got str"),
        ("ranking", {"prompt_id": "p0", "responses": ["a", "b", "a"]},
         r"line 2: field 'responses' holds 'a' twice"),
        ("ranking", {"prompt_id": "p0", "responses": ["a", ""]},
         r"line 2: field 'responses\[1\]' must be non-empty text"),
        ("rating", {"prompt_id": "p0", "response": "b", "rating": float("nan")},
         r"line 2: field 'rating' must be a finite number, got nan"),
        ("rating", {"prompt_id": "p0", "response": "b", "rating": float("inf")},
         r"line 2: field 'rating' must be a finite number, got inf"),
        ("rating", {"prompt_id": "p0", "response": "b", "rating": "good"},
         r"line 2: field 'rating' must be a finite number, got 'good'"),
        ("rating", {"prompt_id": "p0", "response": "b", "rating": True},
         r"line 2: field 'rating' must be a finite number, got True"),
        ("rating", {"prompt_id": "p0", "response": "b"}, r"line 2: missing field 'rating'"),
        ("rating", {"prompt_id": "p0", "response": "a", "rating": 2},
         r"line 2: annotator 'anonymous' already rated this response to prompt 'p0' \(.*line 1\)"),
    ],
)
def test_bad_row_fails_naming_file_line_and_field(tmp_path, kind, row, message):
    path = write_jsonl(tmp_path / "fb.jsonl", [GOOD[kind], row])
    with pytest.raises(ValueError, match=rf"fb\.jsonl {message}"):
        read_feedback_file(path, kind, PROMPTS)


def test_bad_csv_cell_names_the_row(tmp_path):
    path = write_csv(tmp_path / "fb.csv", [{"prompt_id": "p0", "response": "a", "rating": "3"},
                                           {"prompt_id": "p0", "response": "b", "rating": "three"}])
    with pytest.raises(ValueError, match=r"fb\.csv row 1: field 'rating' must be a finite number, got 'three'"):
        read_feedback_file(path, "rating", PROMPTS)
    path = write_csv(tmp_path / "fb.csv", [{"prompt_id": "p0", "chosen": "a", "rejected": ""}])
    with pytest.raises(ValueError, match=r"fb\.csv row 0: missing field 'rejected'"):
        read_feedback_file(path, "pairwise", PROMPTS)


def test_file_that_yields_no_pair_is_refused(tmp_path):
    tied = write_jsonl(tmp_path / "tied.jsonl", [{"prompt_id": "p0", "response": r, "rating": 2} for r in "ab"])
    with pytest.raises(ValueError, match=r"tied\.jsonl: no preference pair in this rating file"):
        read_feedback_file(tied, "rating", PROMPTS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no preference pair in this pairwise file"):
        read_feedback_file(empty, "pairwise", PROMPTS)


def test_unknown_kind_suffix_or_missing_file_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "fb.jsonl", [GOOD["pairwise"]])
    with pytest.raises(ValueError, match=r"unknown feedback kind 'votes'; expected one of pairwise, ranking, rating, page, rlhf-v"):
        read_feedback_file(path, "votes", PROMPTS)
    with pytest.raises(ValueError, match=r"fb\.json: feedback file must end in \.jsonl or \.csv or \.parquet"):
        read_feedback_file(tmp_path / "fb.json", "pairwise", PROMPTS)
    with pytest.raises(FileNotFoundError, match=r"gone\.csv: no such feedback file"):
        read_feedback_file(tmp_path / "gone.csv", "pairwise", PROMPTS)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable parquet feedback file"):
        read_feedback_file(broken, "pairwise", PROMPTS)
