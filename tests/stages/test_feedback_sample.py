"""`mmrlhf feedback sample`: the policy's own samples as tasks, filled in and imported as pairs."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from mmrlhf.cli import main
from mmrlhf.config import load_config
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore
from mmrlhf.feedback.labeling import LabelingSession
from mmrlhf.feedback.tasks import load_tasks
from mmrlhf.stages.common import RunPaths

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


def test_sampled_rankings_filled_in_import_as_pairs_of_the_policys_samples(tmp_path, capsys):
    run = [f"run_dir={tmp_path / 'run'}", "feedback.n_prompts=5", "feedback.samples_per_prompt=3"]
    assert main(["feedback", "sample", "--policy", "init", "--config", str(TINY), *run]) == 0
    tasks_dir = RunPaths(tmp_path / "run").root / "feedback" / "tasks"
    assert f"in {tasks_dir}" in capsys.readouterr().out
    tasks = load_tasks(tasks_dir)
    feedback = pq.read_table(RunPaths(tmp_path / "run").split("feedback")).to_pylist()[:5]
    by_id = {r["id"]: r for r in feedback}
    assert tasks.kind == "ranking" and 0 < len(tasks.rows) <= 5
    for row in tasks.rows:
        assert 2 <= len(row["responses"]) == len(set(row["responses"])) <= 3
        assert tasks.image_bytes(row) == by_id[row["prompt_id"]]["image"]
        assert len(row["gold"]) == len(row["responses"])  # the digits task has a gold score

    # a person ranks by reversing the drawn order
    filled = tmp_path / "filled.jsonl"
    filled.write_text("".join(json.dumps(dict(row, responses=row["responses"][::-1], annotator="ann")) + "\n"
                              for row in tasks.rows))
    assert main(["feedback", "import", str(filled), "--kind", "ranking", "--config", str(TINY), *run]) == 0
    pairs = read_table(RunPaths(tmp_path / "run").pairs, PREFERENCE_SCHEMA).to_pylist()
    samples = {row["prompt_id"]: set(row["responses"]) for row in tasks.rows}
    assert len(pairs) == sum(len(s) * (len(s) - 1) // 2 for s in samples.values())
    assert all({p["chosen"], p["rejected"]} <= samples[p["prompt_id"]] for p in pairs)

    assert main(["feedback", "sample", "--policy", "init", "--config", str(TINY), *run]) == 1
    assert "already exists (it may hold answers)" in capsys.readouterr().err


def test_page_answers_on_sampled_pairs_import_as_pairs(tmp_path, capsys):
    run = [f"run_dir={tmp_path / 'run'}", "feedback.n_prompts=4", "feedback.samples_per_prompt=3"]
    assert main(["feedback", "sample", "--kind", "pairwise", "--policy", "init", "--config", str(TINY), *run]) == 0
    tasks_dir = RunPaths(tmp_path / "run").root / "feedback" / "tasks"
    session = LabelingSession(load_tasks(tasks_dir), AnswerStore(tasks_dir / ANSWERS_DIR))
    while not (payload := session.next_item("ann"))["done"]:
        item = payload["item"]
        session.record({"annotator": "ann", "item_id": item["item_id"], "repeat": item["repeat"],
                        "shown": item["shown"], "choice": "A>B", "seconds": 2.0, "page_version": "t"})
    assert main(["feedback", "import", str(tasks_dir), "--kind", "page", "--config", str(TINY), *run]) == 0
    pairs = read_table(RunPaths(tmp_path / "run").pairs, PREFERENCE_SCHEMA).to_pylist()
    rows = {r["task_id"]: r for r in load_tasks(tasks_dir).rows}
    assert len(pairs) == len(rows) and {p["source"] for p in pairs} == {"labeling-page:pairwise"}
    assert {(p["prompt_id"], frozenset((p["chosen"], p["rejected"]))) for p in pairs} == {
        (r["prompt_id"], frozenset((r["response_a"], r["response_b"]))) for r in rows.values()}
