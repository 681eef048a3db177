"""Run-directory plumbing: atomic outputs, the prompt stream, rollout joins and metrics, text metrics."""

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from mmrlhf.controller import rollout_metrics
from mmrlhf.rollout.prompts import PromptSource
from mmrlhf.stages.common import atomic_dir
from mmrlhf.stages.eval import print_metrics, text_metrics
from mmrlhf.stages.reward_train import held_out_line
from mmrlhf.stages.train import format_table
from mmrlhf.stats import SMALL_SAMPLE, interval_keys, wilson_interval
from mmrlhf.types import Rollout


def test_atomic_dir_keeps_previous_output_when_the_block_fails(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as out:
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as out:
            (out / "weights").write_text("half")
            raise RuntimeError("crash mid-save")
    assert (final / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left


def _pool(n):
    return pa.table({"id": [f"r{i}" for i in range(n)], "image": [b"x"] * n, "prompt": ["q"] * n,
                     "reference": ["secret"] * n})


def test_prompt_source_covers_each_epoch_once_carries_references_and_resumes():
    source = PromptSource(_pool(10), batch_size=3, seed=1)
    epoch0 = [r["id"] for _ in range(3) for r in source.next_batch()]
    assert len(set(epoch0)) == 9  # 3 full batches, no repeat within an epoch
    state = source.state_dict()
    following = [r["id"] for r in source.next_batch()]
    resumed = PromptSource(_pool(10), batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert [r["id"] for r in resumed.next_batch()] == following
    assert source.next_batch()[0]["reference"] == "secret"  # for the reward sources, not the policy


def test_prompt_source_rejects_batch_larger_than_pool():
    with pytest.raises(ValueError, match="batch_size=11"):
        PromptSource(_pool(10), batch_size=11, seed=0)


def _rollout(prompt_ids, r_len, t_len, scores, version=0, **extra):
    b = len(prompt_ids)
    return Rollout(
        prompt_ids=prompt_ids, sample_index=list(range(b)),
        input_ids=torch.ones(b, t_len, dtype=torch.long), attention_mask=torch.ones(b, t_len, dtype=torch.long),
        vision={"pixel_values": torch.zeros(b, 3, 2, 2)}, response_ids=torch.full((b, r_len), 5),
        response_mask=torch.ones(b, r_len), logprobs=torch.full((b, r_len), -1.0),
        finish_reason=["eos"] * b, texts=["t"] * b,
        policy_version=torch.full((b,), version), scores=torch.tensor(scores), **extra)


def test_rollout_concat_repads_prompts_left_and_responses_right():
    joined = Rollout.concat([_rollout(["a"], 2, 3, [1.0]), _rollout(["b"], 4, 5, [2.0], version=1)], pad_token_id=0)
    assert joined.input_ids.shape == (2, 5) and joined.response_ids.shape == (2, 4)
    assert joined.attention_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert joined.response_mask[0].tolist() == [1, 1, 0, 0]
    assert joined.response_ids[0].tolist() == [5, 5, 0, 0]
    assert joined.scores.tolist() == [1.0, 2.0]
    assert joined.policy_version.tolist() == [0, 1]


def test_rollout_concat_fills_a_missing_source_with_nan_and_version_with_minus_one_and_joins_phase_times():
    a = _rollout(["a"], 1, 1, [1.0], source_scores={"model": torch.tensor([1.0])},
                 timings={"time/generate": 2.0, "time/score": 0.5}, reward_version=torch.tensor([2]))
    b = _rollout(["b", "b"], 1, 1, [float("nan")] * 2, timings={"time/generate": 3.0, "time/score": 0.25})  # scoring failed
    parallel = Rollout.concat([a, b], pad_token_id=0, parallel=True)
    torch.testing.assert_close(parallel.source_scores["model"], torch.tensor([1.0, float("nan"), float("nan")]),
                               equal_nan=True)
    assert parallel.timings == {"time/generate": 3.0, "time/score": 0.5}  # the slowest worker's wall time
    assert parallel.reward_version.tolist() == [2, -1, -1]  # the part without one: unscored
    assert Rollout.concat([a, b], pad_token_id=0).timings == {"time/generate": 5.0, "time/score": 0.75}


def test_rollout_metrics_count_groups_whose_samples_all_score_alike():
    r = _rollout(["a", "a", "b", "b"], 1, 1, [1.0, 1.0, 0.0, 2.0], version=3)
    m = rollout_metrics(r, policy_version=4)
    assert "rollout/reward_version" not in m  # a rollout that records none
    assert rollout_metrics(_rollout(["a"], 1, 1, [1.0], reward_version=torch.tensor([3])), 0)["rollout/reward_version"] == 3
    assert m["rollout/all_alike"] == 0.5
    assert m["rollout/reward"] == 1.0
    assert m["rollout/policy_lag"] == 1.0


def test_rollout_metrics_ignore_unscored_rows():
    r = _rollout(["a", "a"], 1, 1, [float("nan"), 3.0])
    assert rollout_metrics(r, 0)["rollout/reward"] == 3.0


def test_text_metrics_hand_worked():
    m = text_metrics(["one two three", "four five"], [["one two three"], ["four six"]])
    assert m["exact_match"] == 50.0
    assert m["exact_match_stderr"] == pytest.approx(100 * (0.25 / 2) ** 0.5)
    # ROUGE-L F: 1.0 and LCS 1 of 2 tokens each side -> 0.5; mean 0.75
    assert m["rouge_l"] == pytest.approx(75.0)
    five = ["one two three four five", "six seven eight nine zero"]
    assert text_metrics(five, [[t] for t in five])["bleu"] == pytest.approx(100.0)
    assert 0 < text_metrics(five, [["one two three four five"], ["six seven eight nine one"]])["bleu"] < 100


def test_text_metrics_use_every_reference():
    hyps = ["a red square on black", "a blue circle on black", "a green circle on black"]
    first = [["a small red box"], ["one blue disc"], ["a green circle on black"]]
    every = [first[0] + ["a red square on black"], first[1] + ["a blue circle on black"], first[2]]
    one, many = text_metrics(hyps, first), text_metrics(hyps, every)
    assert many["exact_match"] == 100.0 and one["exact_match"] == pytest.approx(100 / 3)
    assert many["bleu"] == pytest.approx(100.0) and one["bleu"] < 100
    assert many["rouge_l"] == pytest.approx(100.0) and one["rouge_l"] < 100
    assert many["cider"] > one["cider"]
    # the reference the hypothesis matches may come in any position
    assert text_metrics(hyps, [refs[::-1] for refs in every]) == pytest.approx(many)


def test_text_metrics_reject_mismatched_lists():
    with pytest.raises(ValueError):
        text_metrics(["a"], [])
    with pytest.raises(ValueError, match="example 1 has no reference"):
        text_metrics(["a", "b"], [["a"], []])


def test_train_refuses_a_run_dir_made_with_another_config(tmp_path):
    from mmrlhf.config import load_config, save_config
    from mmrlhf.stages.common import RunPaths
    from mmrlhf.stages.train import check_same_run

    first = load_config(None, [f"run_dir={tmp_path}"])
    check_same_run(first, RunPaths(tmp_path))  # a new run directory: nothing to compare
    save_config(first, tmp_path / "config.yaml")
    check_same_run(load_config(None, [f"run_dir={tmp_path}", "rl.steps=80"]), RunPaths(tmp_path))  # resumable
    with pytest.raises(ValueError, match=r"rl.algorithm: run 'sac', now 'ppo'.*rl.lr: run 0.0001, now 0.0002"):
        check_same_run(load_config(None, [f"run_dir={tmp_path}", "rl.algorithm=ppo", "rl.lr=2e-4"]),
                       RunPaths(tmp_path))


def test_policy_path_names_a_missing_local_folder_but_passes_hub_ids(tmp_path):
    from mmrlhf.config import load_config
    from mmrlhf.stages.common import policy_path

    cfg = load_config(None, [f"run_dir={tmp_path}"])
    for missing in (str(tmp_path / "nope"), "./nope", "runs/x/rl/policy"):
        with pytest.raises(FileNotFoundError, match="no policy folder at"):
            policy_path(cfg, missing)
    assert policy_path(cfg, "llava-hf/llava-1.5-7b-hf") == Path("llava-hf/llava-1.5-7b-hf")
    assert policy_path(cfg, str(tmp_path)) == tmp_path


def test_text_metrics_on_few_examples_carry_their_95_percent_intervals():
    hyps = ["a red square on a black field", "a blue circle on a black field", "a green disc on a grey field",
            "one white box under a dark sky"]
    refs = [["a red square on a black field"], ["a blue circle on a black field"], ["a green circle on a black field"],
            ["a white square on a black field"]]
    m = text_metrics(hyps, refs)
    low, high = wilson_interval(2, 4)
    assert (m["exact_match_low"], m["exact_match_high"]) == pytest.approx((100 * low, 100 * high))
    for name in ("exact_match", "bleu", "rouge_l", "cider"):
        assert m[f"{name}_low"] <= m[name] <= m[f"{name}_high"] and m[f"{name}_low"] < m[f"{name}_high"], name
    many = [f"word{i} word{i + 1} word{i + 2}" for i in range(SMALL_SAMPLE)]
    assert not any(key.endswith("_low") for key in text_metrics(many, [[h] for h in many]))


def test_eval_lines_and_the_table_warn_on_a_one_image_test_split(capsys):
    metrics = text_metrics(["four one"], [["four one seven"]]) | {"n": 1.0}
    print_metrics(metrics, "test")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("warning: these numbers rest on 1 test examples (fewer than 30)")
    assert any(line.split()[0] == "exact_match" and "[0.000, 79.345] 95%" in line for line in out)
    table = format_table(metrics, metrics, "test")
    assert "| exact match (%) | 0.000 [0.000, 79.345] |" in table and table.endswith("a difference inside them may be noise")


def test_reward_line_names_its_pairs_and_interval_under_thirty():
    few = {"reward/val_accuracy": 1.0, "reward/val_pairs": 3} | interval_keys("reward/val_accuracy", wilson_interval(3, 3))
    line = held_out_line(few)
    assert line.startswith("reward: held-out pairwise accuracy 1.000 on 3 pairs (95% interval 0.439 to 1.000)")
    assert line.splitlines()[1].startswith("warning: these numbers rest on 3 held-out pairs")
    assert held_out_line({"reward/val_accuracy": 0.9, "reward/val_pairs": 40}) == \
        "reward: held-out pairwise accuracy 0.900 on 40 pairs"
