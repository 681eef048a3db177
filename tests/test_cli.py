"""The `mmrlhf` command line: one subcommand per stage; config errors exit 2 with one line."""

import subprocess
import sys

import pytest

from mmrlhf.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mmrlhf.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage():
    out = _run("--help")
    assert out.returncode == 0
    for stage in ("data", "sft", "feedback", "reward", "rl", "eval", "train"):
        assert stage in out.stdout


def test_unknown_key_exits_2_with_one_line_naming_it():
    out = _run("sft", "sft.epochz=3")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "sft.epochz" in out.stderr and "epochs" in out.stderr


def test_data_stage_writes_four_splits(tmp_path):
    out = _run("data", f"run_dir={tmp_path}", "data.n_sft=4", "data.n_feedback=4", "data.n_val=4", "data.n_test=4")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "feedback.parquet", "lineage.json", "sft.parquet", "test.parquet", "val.parquet"]


def test_stray_word_after_the_options_is_refused_not_taken_as_an_override(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["feedback", "import", "f.jsonl", "--kind", "rating", "stray"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_a_missing_stage_output_is_one_line_exit_1_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["rl", f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sft policy" in err and "mmrlhf sft" in err
    assert not run_dir.exists()  # no Ray started, no rl/ or tensorboard/ left behind


def test_rl_help_lists_every_rl_key_with_its_default_and_what_the_stage_reads_and_writes():
    import dataclasses

    from mmrlhf.config import RLConfig

    out = _run("rl", "--help")
    assert out.returncode == 0
    for field in dataclasses.fields(RLConfig):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert f"rl.{field.name} ({field.type}, default {default!r})" in out.stdout
    assert "reads:  <run_dir>/sft/policy" in out.stdout and "writes: <run_dir>/rl/policy" in out.stdout


@pytest.mark.parametrize("command, recovery", [
    (["sft"], "re-run `mmrlhf sft`"),
    (["rl"], "`mmrlhf rl --resume` continues from it"),
    (["feedback", "import", "f.jsonl", "--kind", "pairwise"], "re-run `mmrlhf feedback import`"),
])
def test_ctrl_c_names_the_recovery_of_the_interrupted_stage(monkeypatch, capsys, command, recovery):
    def interrupted(cfg, args):
        raise KeyboardInterrupt

    for name in ("_sft", "_rl", "_feedback_import"):
        monkeypatch.setattr(f"mmrlhf.cli.{name}", interrupted)
    assert main(command) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and recovery in err and err.startswith(f"mmrlhf {' '.join(command[:2 if command[0] == 'feedback' else 1])}: interrupted")


def test_a_hub_checkpoint_that_cannot_be_reached_offline_is_one_line_saying_how_to_pass_a_folder(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    out = subprocess.run([sys.executable, "-m", "mmrlhf.cli", "eval", "--policy", "llava-hf/llava-interleave-qwen-0.5b-hf",
                          f"run_dir={tmp_path}", "data.n_sft=2", "data.n_feedback=2", "data.n_val=2", "data.n_test=2"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("mmrlhf eval: policy 'llava-hf/llava-interleave-qwen-0.5b-hf' could not be reached")
    assert "model.policy=/abs/DIR or --policy /abs/DIR" in out.stderr


@pytest.mark.parametrize("sources, names", [
    ('[{name: "tests.reward.nope:score"}]', ["reward source 'tests.reward.nope:score': cannot import"]),
    ('[{name: "tests.reward.rule_functions:NOT_CALLABLE"}]', ["'NOT_CALLABLE' is a float, not callable"]),
    ('[{name: model}]', ["no reward model", "mmrlhf reward train"]),
])
def test_rl_names_a_bad_reward_source_or_missing_model_in_one_line_before_starting_ray(tmp_path, capsys,
                                                                                       sources, names):
    (tmp_path / "sft" / "policy").mkdir(parents=True)  # only its presence is checked before the sources
    assert main(["rl", f"run_dir={tmp_path}", f"reward.sources={sources}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(name in err for name in names), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # nothing started or written
