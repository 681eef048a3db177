"""Published preference data sets, each read from a fixture in its published shape: pairs and provenance."""

import collections
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrlhf.feedback.importer import read_feedback_file
from mmrlhf.feedback.published import VLFEEDBACK_TIES

PROMPTS = {"p0", "p1", "p2"}
IMAGE = {"bytes": b"\x89PNG fake", "path": "coco/1.jpg"}  # a Hugging Face Image feature as stored in Parquet


def write_json(path, entries):
    path.write_text(json.dumps(entries))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rlaif_v_parquet_and_rlhf_v_text_rows_give_one_pair_each(tmp_path):
    rlaif = [{"ds_name": "RLAIF-V", "image": IMAGE, "question": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}",
              "origin_dataset": "OK-VQA", "origin_split": "train", "idx": i, "image_path": "a.jpg"} for i in range(3)]
    path = tmp_path / "rlaif.parquet"
    pq.write_table(pa.Table.from_pylist(rlaif), path)
    pairs = read_feedback_file(path, "rlhf-v", {"0", "1", "2"})
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator, p.source) for p in pairs] == [
        (str(i), f"good {i}", f"bad {i}", "rlhf-v", "import:rlhf-v") for i in range(3)]
    assert [p.origin for p in pairs] == [f"{path} row {i}" for i in range(3)]
    rlhf = [{"ds_name": "RLHF-V", "image": "a.jpg", "idx": "7", "prompt_id": "p1", "annotator": "human-3",
             "text": json.dumps({"question": "What is here?", "chosen": "a cat", "rejected": "a dog"})}]
    (pair,) = read_feedback_file(write_jsonl(tmp_path / "rlhf.jsonl", rlhf), "rlhf-v", PROMPTS)
    assert (pair.prompt_id, pair.chosen, pair.rejected, pair.annotator) == ("p1", "a cat", "a dog", "human-3")


def test_llava_rlhf_preference_picks_the_output_and_keeps_both_models(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(12):
        preference = int(rng.integers(1, 3))
        entries.append({"id": f"p{i % 3}", "image": f"{i}.jpg",
                        "conversations": [{"from": "human", "value": "<image>\nDescribe."}],
                        "output_1": {"from": f"llava-{i}", "value": f"one {i}"},
                        "output_2": {"from": f"gpt-{i}", "value": f"two {i}"}, "preference": preference})
    pairs = read_feedback_file(write_json(tmp_path / "llava_7b_v1_preference.json", entries), "llava-rlhf", PROMPTS)
    expected = [(e["id"], *(( e["output_1"]["value"], e["output_2"]["value"], e["output_1"]["from"], e["output_2"]["from"])
                           if e["preference"] == 1 else
                           (e["output_2"]["value"], e["output_1"]["value"], e["output_2"]["from"], e["output_1"]["from"])))
                for e in entries]
    assert [(p.prompt_id, p.chosen, p.rejected, p.chosen_model, p.rejected_model) for p in pairs] == expected
    assert {p.annotator for p in pairs} == {"llava-rlhf"}
    assert pairs[5].origin.endswith("llava_7b_v1_preference.json entry 5")


def _vlfeedback_row(rng, prompt_id, n):
    completions = []
    for k in range(n):
        ratings = {aspect: int(rng.integers(1, 4)) for aspect in ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")}
        completions.append({"model": f"m{k}", "response": f"{prompt_id} answer {k}",
                            "annotations": {a: {"Rating": str(r), "Rationale": f"{a} is {r}"} for a, r in ratings.items()}})
    return {"id": prompt_id, "image": IMAGE, "prompt": "What is shown?", "models": [c["model"] for c in completions],
            "completions": completions}


def test_vlfeedback_pairs_by_mean_rating_with_ties_dropped_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    rows = [_vlfeedback_row(rng, f"p{i % 3}", int(rng.integers(2, 5))) for i in range(10)]
    path = tmp_path / "vlfeedback.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    dropped = collections.Counter()
    pairs = read_feedback_file(path, "vlfeedback", PROMPTS, dropped)
    # reference: a double loop over every two completions of a row, means computed here
    expected, ties = [], 0
    for row in rows:
        means = [np.mean([float(a["Rating"]) for a in c["annotations"].values()]) for c in row["completions"]]
        for (i, a), (j, b) in itertools.combinations(enumerate(row["completions"]), 2):
            if means[i] == means[j]:
                ties += 1
            else:
                better, worse = (a, b) if means[i] > means[j] else (b, a)
                expected.append((row["id"], better["response"], worse["response"], better["model"], worse["model"]))
    assert ties > 0 and len(expected) > 5  # the draw exercises both cases
    assert [(p.prompt_id, p.chosen, p.rejected, p.chosen_model, p.rejected_model) for p in pairs] == expected
    assert dropped == {VLFEEDBACK_TIES: ties}
    first = pairs[0]
    chosen = next(c for r in rows for c in r["completions"] if c["response"] == first.chosen)
    rejected = next(c for r in rows for c in r["completions"] if c["response"] == first.rejected)
    assert json.loads(first.aspect_scores) == {a: [float(chosen["annotations"][a]["Rating"]), float(rejected["annotations"][a]["Rating"])]
                                               for a in chosen["annotations"]}
    assert f"chosen ({chosen['model']}) Helpfulness: {chosen['annotations']['Helpfulness']['Rationale']}" in first.rationale
    assert f"rejected ({rejected['model']}) Helpfulness:" in first.rationale


def test_povid_conversations_give_chosen_and_rejected_turns(tmp_path):
    def turns(answer):
        return [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}]

    entries = [{"id": f"p{i}", "image": f"COCO_{i}.jpg", "conversations": turns(f"right {i}"),
                "rejected_conversations": turns(f"hallucinated {i}")} for i in range(3)]
    pairs = read_feedback_file(write_json(tmp_path / "POVID_preference_data_for_VLLMs.json", entries), "povid", PROMPTS)
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator, p.source) for p in pairs] == [
        (f"p{i}", f"right {i}", f"hallucinated {i}", "povid", "import:povid") for i in range(3)]


def test_trl_standard_and_conversational_rows(tmp_path):
    rows = [{"prompt_id": "p0", "images": ["0.png"], "prompt": "Count the digits.", "chosen": "three", "rejected": "two"},
            {"prompt_id": "p2", "images": ["2.png"], "annotator": "ann",
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read it."}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "four one"}]}],
             "rejected": [{"role": "assistant", "content": "four"}]}]
    pairs = read_feedback_file(write_jsonl(tmp_path / "trl.jsonl", rows), "trl", PROMPTS)
    assert [(p.prompt_id, p.chosen, p.rejected, p.annotator) for p in pairs] == [
        ("p0", "three", "two", "trl"), ("p2", "four one", "four", "ann")]


GOOD = {
    "rlhf-v": {"idx": "p0", "image": "a.jpg", "question": "q", "chosen": "a", "rejected": "b"},
    "llava-rlhf": {"id": "p0", "image": "a.jpg", "conversations": [], "output_1": {"from": "m", "value": "a"},
                   "output_2": {"from": "m", "value": "b"}, "preference": 1},
    "vlfeedback": {"id": "p0", "image": "a.jpg", "prompt": "q", "completions": [
        {"model": "m", "response": "a", "annotations": {"Helpfulness": {"Rating": "5"}}},
        {"model": "n", "response": "b", "annotations": {"Helpfulness": {"Rating": "2"}}}]},
    "povid": {"id": "p0", "image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
              "rejected_conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]},
    "trl": {"prompt_id": "p0", "images": ["a.jpg"], "prompt": "q", "chosen": "a", "rejected": "b"},
}


@pytest.mark.parametrize("kind, change, message", [
    ("rlhf-v", {"image": None}, r"missing field 'image'"),
    ("rlhf-v", {"idx": "p9"}, r"prompt_id 'p9' is not in the run's feedback split"),
    ("rlhf-v", {"text": "not json"}, r"field 'text' is not valid JSON"),
    ("rlhf-v", {"rejected": "a"}, r"the chosen and rejected responses are the same text"),
    ("llava-rlhf", {"preference": 3}, r"field 'preference' must be 1 or 2 \(the better output\), got 3"),
    ("llava-rlhf", {"output_2": "b"}, r"field 'output_2' must be \{\"from\": model, \"value\": text\}"),
    ("llava-rlhf", {"output_1": {"from": "m", "value": ""}}, r"field 'output_1.value' must be non-empty text"),
    ("vlfeedback", {"completions": [{"model": "m", "response": "a", "annotations": {"Helpfulness": {"Rating": "5"}}}]},
     r"field 'completions' must be a list of at least 2 completions"),
    ("vlfeedback", {"completions": [{"model": "m", "response": "a", "annotations": {"Helpfulness": {"Rating": "N/A"}}},
                                    {"model": "n", "response": "b", "annotations": {"Helpfulness": {"Rating": "2"}}}]},
     r"field 'completions\[0\].annotations.Helpfulness.Rating' must be a finite number, got 'N/A'"),
    ("vlfeedback", {"completions": [{"model": "m", "response": "a", "annotations": {"Helpfulness": {"Rating": "5"}}},
                                    {"model": "n", "response": "b", "annotations": {"Honesty": {"Rating": "2"}}}]},
     r"field 'completions' rates on different aspects"),
    ("povid", {"rejected_conversations": [{"from": "human", "value": "q"}]}, r"field 'rejected_conversations' has no gpt turn"),
    ("povid", {"rejected_conversations": [{"from": "human", "value": "other"}, {"from": "gpt", "value": "b"}]},
     r"field 'rejected_conversations' asks 'other', but 'conversations' asks 'q'"),
    ("trl", {"images": []}, r"field 'images' must be a non-empty list of images"),
    ("trl", {"chosen": [{"role": "assistant"}]}, r"field 'chosen' must be text or a list of \{\"role\", \"content\"\} messages"),
    ("trl", {"prompt_id": None}, r"missing field 'prompt_id'"),
])
def test_bad_row_fails_naming_file_entry_and_field(tmp_path, kind, change, message):
    bad = {**GOOD[kind], **change}
    path = write_json(tmp_path / "published.json", [GOOD[kind], bad])
    with pytest.raises(ValueError, match=rf"published\.json entry 1: {message}"):
        read_feedback_file(path, kind, PROMPTS)


def test_json_file_that_is_not_a_list_is_refused(tmp_path):
    path = write_json(tmp_path / "one.json", GOOD["povid"])
    with pytest.raises(ValueError, match=r"one\.json: a \.json povid file must hold a JSON list of entries, got dict"):
        read_feedback_file(path, "povid", PROMPTS)
