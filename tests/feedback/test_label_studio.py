"""Label Studio round trip: our tasks exported as Label Studio tasks, its JSON export imported as pairs."""

import base64
import collections
import itertools
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mmrlhf.feedback.importer import read_feedback_file
from mmrlhf.feedback.label_studio import CANCELLED, NO_CHOICE, export_label_studio
from mmrlhf.feedback.tasks import HIDDEN_FIELDS, PromptSamples, task_rows, write_tasks

PNG = b"\x89PNG\r\n\x1a\n fake image"


def _tasks(tmp_path, kind):
    prompts = [PromptSamples(f"p{i}", "What number is written?", PNG, [f"r{i}{k}" for k in range(3)],
                             gold=[0.0, 0.5, 1.0], origins=["sft", "rl", "sft"]) for i in range(2)]
    rows = task_rows(kind, prompts, np.random.default_rng(0), gold_fraction=0.5)
    return write_tasks(tmp_path / kind, kind, prompts, rows, {"policy": "sft"})


def _exported(folder):
    tasks = json.loads((folder / "tasks.json").read_text())
    ET.fromstring((folder / "config.xml").read_text())  # the labeling config is well-formed XML
    return tasks


def _export_file(tmp_path, tasks, annotations):
    """What Label Studio's `Export → JSON` writes: the imported tasks, numbered, with their annotations."""
    entries = [{"id": i + 1, "data": task["data"], "annotations": annotations[i]} for i, task in enumerate(tasks)]
    path = tmp_path / "project-1-at-2026-12-02.json"
    path.write_text(json.dumps(entries))
    return path


def test_pairwise_export_hides_gold_and_its_annotations_come_back_as_pairs(tmp_path):
    folder = export_label_studio(_tasks(tmp_path, "pairwise"))
    tasks = _exported(folder)
    assert len(tasks) == 6
    for task in tasks:
        data = task["data"]
        assert not set(data) & set(HIDDEN_FIELDS)
        assert base64.b64decode(data["image"].removeprefix("data:image/png;base64,")) == PNG
    rng = np.random.default_rng(1)
    choices = [str(rng.choice(["left", "right"])) for _ in tasks]
    annotations = [[{"id": 10 + i, "completed_by": 3, "was_cancelled": False, "lead_time": 4.2, "result": [
        {"from_name": "comparison", "to_name": "comparison", "type": "pairwise", "value": {"selected": choice}},
        {"from_name": "rationale", "to_name": "image", "type": "textarea", "value": {"text": [f"because {i}"]}}]}]
        for i, choice in enumerate(choices)]
    annotations[0].append({"id": 99, "completed_by": {"id": 5, "email": "ann@example.org"}, "was_cancelled": True, "result": []})
    annotations[1].append({"id": 98, "completed_by": {"id": 5, "email": "ann@example.org"}, "result": [
        {"from_name": "rationale", "to_name": "image", "type": "textarea", "value": {"text": ["unsure"]}}]})
    path = _export_file(tmp_path, tasks, annotations)
    dropped = collections.Counter()
    pairs = read_feedback_file(path, "label-studio", {"p0", "p1"}, dropped)
    expected = [(t["data"]["prompt_id"], *((t["data"]["response_a"], t["data"]["response_b"]) if c == "left"
                                           else (t["data"]["response_b"], t["data"]["response_a"])))
                for t, c in zip(tasks, choices)]
    assert [(p.prompt_id, p.chosen, p.rejected) for p in pairs] == expected
    assert {p.annotator for p in pairs} == {"label-studio:3"}
    assert [p.rationale for p in pairs] == [f"because {i}" for i in range(6)]
    assert pairs[2].origin == f"{path} entry 2 annotation 0"
    assert dropped == {CANCELLED: 1, NO_CHOICE: 1}


def test_ranking_annotations_give_every_pair_of_the_order(tmp_path):
    tasks = _exported(export_label_studio(_tasks(tmp_path, "ranking")))
    orders = [["r2", "r0", "r1"], ["r1", "r2", "r0"]]
    annotations = [[{"completed_by": {"id": 7, "email": "bob@example.org"}, "result": [
        {"from_name": "rank", "to_name": "responses", "type": "ranker", "value": {"ranker": {"rank": order}}}]}]
        for order in orders]
    pairs = read_feedback_file(_export_file(tmp_path, tasks, annotations), "label-studio", {"p0", "p1"})
    body = [{item["id"]: item["body"] for item in t["data"]["items"]} for t in tasks]
    expected = [(t["data"]["prompt_id"], body[i][a], body[i][b])
                for i, (t, order) in enumerate(zip(tasks, orders)) for a, b in itertools.combinations(order, 2)]
    assert [(p.prompt_id, p.chosen, p.rejected) for p in pairs] == expected
    assert {(p.annotator, p.source) for p in pairs} == {("label-studio:bob@example.org", "import:label-studio")}


def test_rating_tasks_have_no_label_studio_export(tmp_path):
    with pytest.raises(ValueError, match=r"rating tasks have no Label Studio export"):
        export_label_studio(_tasks(tmp_path, "rating"))


@pytest.mark.parametrize("kind, result, message", [
    ("pairwise", {"type": "pairwise", "value": {"selected": "middle"}},
     r"field 'result.pairwise.selected' must be 'left' or 'right', got 'middle'"),
    ("ranking", {"type": "ranker", "value": {"ranker": {"rank": ["r0", "r1"]}}},
     r"field 'result.ranker' orders \['r0', 'r1'\], not each of the items \['r0', 'r1', 'r2'\] once"),
    ("ranking", {"type": "ranker", "value": {"ranker": {"good": ["r0"], "bad": ["r1", "r2"]}}},
     r"field 'result.ranker' must hold one ranked list of item ids"),
])
def test_bad_annotation_fails_naming_file_task_annotation_and_field(tmp_path, kind, result, message):
    tasks = _exported(export_label_studio(_tasks(tmp_path, kind)))
    annotations = [[] for _ in tasks]
    annotations[1] = [{"completed_by": 1, "result": [result]}]
    path = _export_file(tmp_path, tasks, annotations)
    with pytest.raises(ValueError, match=rf"project-1-at-2026-12-02\.json entry 1 annotation 0: {message}"):
        read_feedback_file(path, "label-studio", {"p0", "p1"})
