"""The controller's checks on a rollout: policy lag and reward statistics."""

import pytest
import torch

from mmrlhf.controller import check_policy_lag, rollout_metrics
from mmrlhf.types import Rollout


def rollout(versions, scores, **extra):
    n = len(versions)
    return Rollout(prompt_ids=["a", "a", "b", "b"][:n], sample_index=list(range(n)),
                   input_ids=torch.zeros(n, 2, dtype=torch.long), attention_mask=torch.ones(n, 2, dtype=torch.long),
                   vision={"pixel_values": torch.zeros(n, 3, 4, 4)}, response_ids=torch.zeros(n, 1, dtype=torch.long),
                   response_mask=torch.ones(n, 1, dtype=torch.long), logprobs=torch.zeros(n, 1),
                   finish_reason=["eos", "length", "eos", "eos"][:n], texts=[""] * n,
                   policy_version=torch.tensor(versions), scores=torch.tensor(scores), **extra)


def test_rollout_older_than_max_policy_lag_is_refused_naming_versions():
    check_policy_lag(rollout([3, 3, 2, 3], [0.0] * 4), policy_version=3, max_policy_lag=1)
    with pytest.raises(RuntimeError, match="policy version 1 while the learner is at 3: lag 2 is above "
                                           "rl.max_policy_lag=1"):
        check_policy_lag(rollout([3, 1, 3, 3], [0.0] * 4), policy_version=3, max_policy_lag=1)


def test_rollout_metrics_skip_unscored_rows_and_count_alike_groups():
    metrics = rollout_metrics(rollout([2, 2, 1, 2], [1.0, 1.0, float("nan"), 3.0]), policy_version=2)
    assert metrics["rollout/reward"] == pytest.approx(5 / 3)
    assert metrics["rollout/all_alike"] == 1.0  # prompt "a" scored alike; "b" has one scored sample
    assert metrics["rollout/truncated"] == 0.25
    assert metrics["rollout/policy_lag"] == 1.0


def test_rollout_metrics_give_each_sources_mean_over_scored_rows_its_unscored_count_and_phase_times():
    nan = float("nan")
    sources = {"model": torch.tensor([1.0, 2.0, nan, 4.0]), "gold_reward": torch.tensor([nan, nan, nan, 0.5])}
    r = rollout([0] * 4, [1.0, 2.0, nan, 4.0], source_scores=sources,
                timings={"time/generate": 1.5, "time/score": 0.25})
    metrics = rollout_metrics(r, policy_version=0)
    assert metrics["rollout/reward/model"] == pytest.approx(7 / 3)
    assert metrics["rollout/unscored/model"] == 1.0
    assert metrics["rollout/reward/gold_reward"] == 0.5
    assert metrics["rollout/unscored/gold_reward"] == 3.0
    assert (metrics["time/generate"], metrics["time/score"]) == (1.5, 0.25)
