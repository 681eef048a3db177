"""Stage lineage: outputs record what made them; stale inputs and replaced upstream outputs are refused."""

import json

import pytest

from mmrlhf.cli import main
from mmrlhf.config import load_config
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.data import prepare_data
from mmrlhf.stages.lineage import SFT, StaleOutputError, check_current, check_no_dependents, lineage_of
from tests.stages.test_own_data import TINY, own_data, write_manifest

FAST_SFT = ("sft.epochs=1", "sft.vision_warmup_epochs=0", "eval.max_new_tokens=2")


@pytest.fixture
def run(tmp_path):
    """(argv tail, run dir) of an own-data run on 8 shape images whose `data` and `sft` have run."""
    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), *own_data(run_dir, write_manifest(tmp_path, 8)), *FAST_SFT]
    assert main(["data", *args]) == 0
    assert main(["sft", *args]) == 0
    return args, run_dir


def test_every_stage_output_records_its_config_and_input_hashes(run):
    _, run_dir = run
    data = json.loads((run_dir / "data" / "lineage.json").read_text())
    sft = json.loads((run_dir / "sft" / "lineage.json").read_text())
    assert data["command"] == "mmrlhf data" and data["config"]["data"]["seed"] == 0
    assert list(data["inputs"]) == [str(run_dir.parent / "captions.jsonl")]
    assert sft["command"] == "mmrlhf sft" and sft["config"]["model"] == {"policy": "tiny"}
    assert list(sft["inputs"]) == ["data/sft.parquet"] and len(sft["inputs"]["data/sft.parquet"]) == 64


def test_data_with_another_seed_while_sft_exists_is_refused_naming_sft(run, capsys):
    args, run_dir = run
    before = (run_dir / "data" / "sft.parquet").read_bytes()
    capsys.readouterr()
    assert main(["data", *args, "data.seed=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("mmrlhf data: sft/ was made from data/, and `mmrlhf data` would now make data/ differently "
                          "(data.seed: made with 0, now 1): use another run_dir, remove sft/, or pass --force")
    assert (run_dir / "data" / "sft.parquet").read_bytes() == before
    assert main(["data", *args]) == 0  # the same settings again: up to date, nothing refused
    assert "is up to date" in capsys.readouterr().out


def test_a_stage_on_splits_made_with_other_settings_is_refused_naming_data(run, capsys):
    args, _ = run
    capsys.readouterr()
    assert main(["eval", *args, "data.seed=1"]) == 1
    assert capsys.readouterr().err == ("mmrlhf eval: data/ is stale (data.seed: made with 0, now 1): re-run "
                                       "`mmrlhf data` to make it again (or pass --force to use it as it is)\n")


def test_eval_after_a_changed_split_is_refused_naming_sft_and_its_command(run, capsys):
    args, run_dir = run
    assert main(["data", *args, "data.seed=1", "--force"]) == 0
    capsys.readouterr()
    assert main(["eval", *args, "data.seed=1"]) == 1
    assert capsys.readouterr().err == ("mmrlhf eval: sft/ is stale (data/sft.parquet changed): re-run `mmrlhf sft` "
                                       "to make it again (or pass --force to use it as it is)\n")
    assert not (run_dir / "eval").exists()
    assert main(["sft", *args, "data.seed=1"]) == 0  # what the message says to do
    assert main(["eval", *args, "data.seed=1"]) == 0
    eval_lineage = json.loads((run_dir / "eval" / "sft" / "lineage.json").read_text())
    assert set(eval_lineage["inputs"]) == {"data/test.parquet", "sft/lineage.json"}


def test_a_changed_data_file_makes_the_splits_stale(run, capsys):
    args, run_dir = run
    manifest = run_dir.parent / "captions.jsonl"
    manifest.write_text(manifest.read_text().replace("a red square", "a crimson square"))
    capsys.readouterr()
    assert main(["sft", *args]) == 1
    assert capsys.readouterr().err.startswith(f"mmrlhf sft: data/ is stale ({manifest} changed): re-run `mmrlhf data`")


def test_outputs_without_a_lineage_are_taken_as_current(tmp_path):
    cfg = load_config(TINY, [f"run_dir={tmp_path}", "data.n_sft=2", "data.n_feedback=2", "data.n_val=2",
                             "data.n_test=2"])
    prepare_data(cfg)
    (tmp_path / "data" / "lineage.json").unlink()  # a run directory from before lineages
    check_current(cfg, "data")
    check_no_dependents(cfg, lineage_of(cfg, SFT, []), "sft")
    prepare_data(cfg, rebuild=True)  # written again, now with a lineage, which is then checked
    assert (RunPaths(tmp_path).data / "lineage.json").exists()
    with pytest.raises(StaleOutputError, match=r"data.n_sft: made with 2, now 3"):
        check_current(load_config(TINY, [f"run_dir={tmp_path}", "data.n_sft=3"]), "data")
