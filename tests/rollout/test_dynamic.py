"""DAPO dynamic sampling: all-alike groups are dropped, the step is refilled, tries are bounded."""

import torch

from mmrlhf.rollout.dynamic import fill_informative
from mmrlhf.types import Rollout


def scored(prompts: list[str], scores: list[float]) -> Rollout:
    """A rollout of one-token responses: `prompts[i]` answered with score `scores[i]`."""
    n = len(prompts)
    return Rollout(prompt_ids=list(prompts), sample_index=list(range(n)),
                   input_ids=torch.zeros(n, 2, dtype=torch.long), attention_mask=torch.ones(n, 2, dtype=torch.long),
                   vision={"pixel_values": torch.zeros(n, 3, 4, 4)}, response_ids=torch.arange(n)[:, None],
                   response_mask=torch.ones(n, 1, dtype=torch.long), logprobs=torch.zeros(n, 1),
                   finish_reason=["eos"] * n, texts=[f"t{i}" for i in range(n)],
                   policy_version=torch.zeros(n, dtype=torch.int64), scores=torch.tensor(scores))


def feeder(batches: list[Rollout]):
    calls = []

    def more() -> Rollout:
        calls.append(1)
        return batches[len(calls) - 1]
    return more, calls


def alike_groups(rollout: Rollout) -> list[str]:
    by_prompt: dict[str, list[float]] = {}
    for pid, s in zip(rollout.prompt_ids, rollout.scores.tolist()):
        by_prompt.setdefault(pid, []).append(s)
    return [p for p, s in by_prompt.items() if max(s) - min(s) <= 1e-6]


def test_all_alike_groups_are_dropped_and_the_step_refilled_from_new_prompts():
    first = scored(["a", "a", "b", "b", "c", "c"], [1.0, 1.0, 0.0, 1.0, 0.5, 0.5])  # only b informative
    more, calls = feeder([scored(["d", "d", "e", "e", "f", "f"], [0.2, 0.2, 0.0, 0.3, 0.9, 0.1])])
    kept, metrics = fill_informative(first, more, target_prompts=3, max_tries=3, row_multiple=2, pad_token_id=0)
    assert kept.prompt_ids == ["b", "b", "e", "e", "f", "f"]
    assert kept.texts == ["t2", "t3", "t2", "t3", "t4", "t5"]  # rows travel with their own fields
    assert alike_groups(kept) == []
    assert len(calls) == 1
    assert metrics == {"rollout/dynamic_tries": 1.0, "rollout/dropped_prompts": 3.0,
                       "rollout/informative_prompts": 3.0}


def test_extra_prompts_beyond_the_target_and_to_fill_equal_rank_shards_are_dropped():
    first = scored(["a", "a", "a", "b", "b", "b"], [0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    more, calls = feeder([])
    kept, metrics = fill_informative(first, more, target_prompts=2, max_tries=2, row_multiple=4, pad_token_id=0)
    # 2 prompts x 3 samples = 6 rows, then 3 rows: neither is a multiple of 4 ranks
    assert kept is None
    assert calls == [] and metrics["rollout/dropped_prompts"] == 2.0
    kept, _ = fill_informative(first, more, target_prompts=2, max_tries=2, row_multiple=3, pad_token_id=0)
    assert kept.prompt_ids == ["a", "a", "a", "b", "b", "b"]


def test_a_batch_where_every_group_is_alike_stops_after_the_bounded_tries_and_says_so(caplog):
    alike = scored(["a", "a", "b", "b"], [1.0, 1.0, 0.0, 0.0])
    more, calls = feeder([alike] * 10)
    kept, metrics = fill_informative(alike, more, target_prompts=2, max_tries=3, row_multiple=2, pad_token_id=0)
    assert kept is None
    assert len(calls) == 3
    assert metrics["rollout/dynamic_tries"] == 3.0 and metrics["rollout/informative_prompts"] == 0.0
    assert "every prompt's samples scored alike in 4 tries" in caplog.text


def test_unscored_samples_do_not_make_a_group_informative():
    first = scored(["a", "a", "b", "b"], [1.0, float("nan"), 0.0, 1.0])
    kept, _ = fill_informative(first, feeder([])[0], target_prompts=1, max_tries=0, row_multiple=1, pad_token_id=0)
    assert kept.prompt_ids == ["b", "b"]
