"""Fit checks: settings that cannot fit the data or the cluster are named before anything starts."""

import logging
from pathlib import Path

import pytest
import ray

from mmrlhf.config import load_config
from mmrlhf.data.media import MediaLimits
from mmrlhf.stages.fit import (check_cluster_fits, check_prompts_fit, check_split_fits_positions,
                               reference_token_counts, total_demand, truncation_warning)
from mmrlhf.models.tokenizer import train_tokenizer

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


def test_tiny_job_fits_the_two_cpus_of_a_head_on_this_machine():
    assert total_demand(load_config(TINY)) == {"CPU": 1.25}
    check_cluster_fits(load_config(TINY), {"CPU": 2.0}, {"CPU": 2.0})


def test_missing_resources_are_named_with_the_keys_that_ask_for_them():
    cfg = load_config(TINY, ["resources.rollout_cpus=1", "resources.learner_gpus=1"])
    with pytest.raises(ValueError) as err:
        check_cluster_fits(cfg, {"CPU": 2.0}, {"CPU": 2.0})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("rl: the configured actors need CPU 2.75 (the cluster has 2), GPU 2 (the cluster has 0): "
                              "rl.rollout_workers=2 x resources.rollout_cpus=1; rl.learner_ranks=2 x "
                              "resources.learner_cpus=0.25 + resources.learner_gpus=1; reward.min_replicas=1")


def test_resources_held_by_other_work_are_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        check_cluster_fits(load_config(TINY), {"CPU": 2.0}, {"CPU": 1.0})
    assert "rl: waiting for CPU 1.25 (free now 1) held by other work" in caplog.text


def test_custom_resources_count_one_unit_per_actor():
    cfg = load_config(TINY, ["resources.reward_resource=reward_node", "reward.min_replicas=2", "reward.max_replicas=2"])
    assert total_demand(cfg)["reward_node"] == 2.0
    with pytest.raises(ValueError, match=r"reward_node 2 \(the cluster has 1\)"):
        check_cluster_fits(cfg, {"CPU": 8.0, "reward_node": 1.0}, {"CPU": 8.0, "reward_node": 1.0})


def test_prompts_per_step_above_the_feedback_split_names_the_key():
    check_prompts_fit("rl.prompts_per_step", 4, "feedback", 4)
    with pytest.raises(ValueError, match=r"^rl.prompts_per_step=100 but the feedback split holds 4 prompts: set "
                                         r"rl.prompts_per_step to at most 4"):
        check_prompts_fit("rl.prompts_per_step", 100, "feedback", 4)


def test_truncation_warning_gives_the_share_cut_and_the_length_needed():
    tokenizer = train_tokenizer(["a red square on a black ground"])
    counts = reference_token_counts(tokenizer, ["a red square", "a red square on a black ground"])
    assert counts == [4, 8]  # words + eos
    assert truncation_warning(counts, 8, "sft.max_new_tokens", "refs") is None
    assert truncation_warning(counts, 6, "sft.max_new_tokens", "the sft split's references") == (
        "sft.max_new_tokens=6 truncates 50% of the sft split's references (longest 8 tokens with eos): "
        "set sft.max_new_tokens=8")


@pytest.mark.ray
def test_rl_system_on_a_real_cluster_too_small_refuses_before_starting_any_actor(ray_cluster, tmp_path):
    from mmrlhf.stages.rl import rl_system

    cfg = load_config(TINY, [f"run_dir={tmp_path}", "resources.rollout_cpus=3"])  # 6 + 0.75 > the fixture's 4 CPUs
    with pytest.raises(ValueError, match=r"rl: the configured actors need CPU 6.75 \(the cluster has 4\)"):
        with rl_system(cfg):
            pass
    assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]  # no actor holds any
    assert not (tmp_path / "rl").exists()


def test_a_record_too_long_for_the_policy_positions_is_refused_at_data_time(tmp_path):
    import io

    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from mmrlhf.models import build_policy_preset

    policy = build_policy_preset("tiny", tmp_path / "policy")  # 256 positions, 64 image tokens
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png, format="PNG")
    table = pa.table({"id": ["short", "long"], "image": [png.getvalue()] * 2,
                      "prompt": ["What number is written?", " ".join(["digits"] * 40)]})
    check_split_fits_positions(str(policy), table.slice(0, 1), MediaLimits(), 160, "rl.max_new_tokens")
    with pytest.raises(ValueError, match=r"^record long: 64 image tokens \+ 41 prompt tokens \+ rl.max_new_tokens=160 "
                                         r"need 265 positions, above the model's limit of 256"):
        check_split_fits_positions(str(policy), table, MediaLimits(), 160, "rl.max_new_tokens")
