"""`mmrlhf feedback import`: pairs written atomically, refusal to overwrite, --append, the CLI round trip."""

import json
import shutil
from pathlib import Path

import pytest

from mmrlhf.cli import main
from mmrlhf.config import load_config
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table, write_table
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.data import load_split, prepare_data
from mmrlhf.stages.feedback_import import run_feedback_import

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny run's data splits, built once; each test copies them into its own run directory."""
    cfg = load_config(TINY, [f"run_dir={tmp_path_factory.mktemp('tiny')}"])
    prepare_data(cfg)
    return RunPaths(cfg.run_dir).data


@pytest.fixture
def cfg(tmp_path, data_dir):
    shutil.copytree(data_dir, RunPaths(tmp_path / "run").data)
    return load_config(TINY, [f"run_dir={tmp_path / 'run'}"])


def _ids(cfg, n):
    return load_split(cfg, "feedback").column("id").to_pylist()[:n]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_import_writes_pairs_then_refuses_to_overwrite_unless_appending(cfg, tmp_path, capsys):
    p0, p1 = _ids(cfg, 2)
    ranking = write_jsonl(tmp_path / "rank.jsonl", [{"prompt_id": p0, "responses": ["a", "b", "c"], "annotator": "ann"},
                                                    {"prompt_id": p1, "responses": ["d", "e"], "annotator": "bob"}])
    assert run_feedback_import(cfg, ranking, "ranking") == 4
    assert capsys.readouterr().out.strip().endswith("4 preference pairs (ranking) over 2 prompts from 2 annotators; "
                                                    f"{RunPaths(cfg.run_dir).pairs} holds 4")
    pairs_file = RunPaths(cfg.run_dir).pairs
    written, lineage = pairs_file.read_bytes(), (pairs_file.parent / "lineage.json").read_bytes()
    pairwise = write_jsonl(tmp_path / "pw.jsonl", [{"prompt_id": p1, "chosen": "x", "rejected": "y"}])
    with pytest.raises(FileExistsError, match="already holds preference pairs; pass --append"):
        run_feedback_import(cfg, pairwise, "pairwise")
    assert pairs_file.read_bytes() == written
    assert run_feedback_import(cfg, pairwise, "pairwise", append=True) == 1
    rows = read_table(pairs_file, PREFERENCE_SCHEMA).to_pylist()
    assert [(r["chosen"], r["rejected"], r["annotator"], r["source"]) for r in rows] == [
        ("a", "b", "ann", "import:ranking"), ("a", "c", "ann", "import:ranking"), ("b", "c", "ann", "import:ranking"),
        ("d", "e", "bob", "import:ranking"), ("x", "y", "anonymous", "import:pairwise")]


def test_appended_human_pairs_join_simulated_ones(cfg, tmp_path):
    p0, p1 = _ids(cfg, 2)
    simulated = {"prompt_id": p0, "chosen": "one", "rejected": "two", "annotator": "simulated-gold", "source": "simulated"}
    write_table([simulated], RunPaths(cfg.run_dir).pairs, PREFERENCE_SCHEMA)
    ratings = write_jsonl(tmp_path / "rate.jsonl", [{"prompt_id": p1, "response": "good", "rating": 5},
                                                    {"prompt_id": p1, "response": "bad", "rating": 1}])
    run_feedback_import(cfg, ratings, "rating", append=True)
    rows = read_table(RunPaths(cfg.run_dir).pairs, PREFERENCE_SCHEMA).to_pylist()
    no_provenance = dict.fromkeys(["origin", "chosen_model", "rejected_model", "aspect_scores", "rationale"])
    assert rows == [simulated | no_provenance,
                    {"prompt_id": p1, "chosen": "good", "rejected": "bad", "annotator": "anonymous",
                     "source": "import:rating", **no_provenance, "origin": f"{ratings} line 1; {ratings} line 2"}]


def test_bad_file_leaves_existing_pairs_untouched_and_no_temp_file(cfg, tmp_path):
    (p0,) = _ids(cfg, 1)
    sft_id = load_split(cfg, "sft").column("id")[0].as_py()
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt_id": p0, "chosen": "a", "rejected": "b"}])
    run_feedback_import(cfg, good, "pairwise")
    pairs_file = RunPaths(cfg.run_dir).pairs
    written, lineage = pairs_file.read_bytes(), (pairs_file.parent / "lineage.json").read_bytes()
    # an SFT record has an image too, but it is not a prompt of the feedback split
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt_id": p0, "chosen": "c", "rejected": "d"},
                                               {"prompt_id": sft_id, "chosen": "c", "rejected": "d"}])
    with pytest.raises(ValueError, match=rf"bad\.jsonl line 2: prompt_id '{sft_id}' is not in the run's feedback split"):
        run_feedback_import(cfg, bad, "pairwise", append=True)
    assert pairs_file.read_bytes() == written and (pairs_file.parent / "lineage.json").read_bytes() == lineage
    assert sorted(p.name for p in pairs_file.parent.iterdir()) == ["lineage.json", "pairs.parquet"]


def test_cli_round_trip_and_one_line_errors(cfg, tmp_path, capsys):
    p0, p1 = _ids(cfg, 2)
    path = tmp_path / "ratings.csv"
    path.write_text(f"prompt_id,response,rating,annotator\n{p0},one two,4,ann\n{p0},one,2,ann\n{p1},three,1,bob\n")
    args = ["feedback", "import", str(path), "--kind", "rating", "--config", str(TINY), f"run_dir={cfg.run_dir}"]
    assert main(args) == 0
    assert "1 preference pairs (rating) over 1 prompts from 1 annotators" in capsys.readouterr().out
    rows = read_table(RunPaths(cfg.run_dir).pairs, PREFERENCE_SCHEMA).to_pylist()
    assert [{k: r[k] for k in ("prompt_id", "chosen", "rejected", "annotator", "source", "origin")} for r in rows] == [
        {"prompt_id": p0, "chosen": "one two", "rejected": "one", "annotator": "ann", "source": "import:rating",
         "origin": f"{path} row 0; {path} row 1"}]

    assert main(args) == 1  # pairs exist, no --append
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--append" in err
    assert main(args[:4] + ["rank", "--append"] + args[5:]) == 1
    assert "unknown feedback kind 'rank'" in capsys.readouterr().err
    path.write_text(f"prompt_id,response,rating\n{p0},four,high\n")
    assert main(args + ["--append"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ratings.csv row 0: field 'rating' must be a finite number, got 'high'" in err
    assert read_table(RunPaths(cfg.run_dir).pairs, PREFERENCE_SCHEMA).num_rows == 1


def test_published_import_keeps_provenance_and_a_malformed_row_writes_nothing(cfg, tmp_path, capsys):
    p0, p1 = _ids(cfg, 2)
    completion = lambda model, text, rating: {"model": model, "response": text,  # noqa: E731
                                              "annotations": {"Helpfulness": {"Rating": rating, "Rationale": "why"}}}
    rows = [{"id": p0, "image": "a.jpg", "prompt": "q", "completions": [
        completion("m1", "one", "4"), completion("m2", "two", "2"), completion("m3", "three", "4")]}]
    good = write_jsonl(tmp_path / "vlf.jsonl", rows)
    assert run_feedback_import(cfg, good, "vlfeedback") == 2
    assert capsys.readouterr().out.strip().endswith("holds 2; dropped 1 vlfeedback: tied completions")
    pairs_file = RunPaths(cfg.run_dir).pairs
    written = read_table(pairs_file, PREFERENCE_SCHEMA).to_pylist()
    assert [(r["chosen"], r["rejected"], r["chosen_model"], r["rejected_model"], r["aspect_scores"], r["origin"])
            for r in written] == [("one", "two", "m1", "m2", '{"Helpfulness": [4.0, 2.0]}', f"{good} line 1"),
                                  ("three", "two", "m3", "m2", '{"Helpfulness": [4.0, 2.0]}', f"{good} line 1")]
    before = pairs_file.read_bytes()
    bad = write_jsonl(tmp_path / "povid.jsonl", [
        {"id": p1, "image": "b.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
         "rejected_conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]},
        {"id": p1, "image": "b.jpg", "conversations": [{"from": "human", "value": "q"}]}])
    with pytest.raises(ValueError, match=r"povid\.jsonl line 2: field 'conversations' has no gpt turn"):
        run_feedback_import(cfg, bad, "povid", append=True)
    assert pairs_file.read_bytes() == before
