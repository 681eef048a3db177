"""Faults on a real local Ray cluster: a rollout worker killed mid-step, a reward replica that
fails its health check and then hangs, a reward call that can never be answered (tiny presets)."""

from __future__ import annotations

import dataclasses

import pytest
import ray
import torch
from ray import serve

from mmrlhf.controller import train_loop
from mmrlhf.reward.serve_app import build_reward_app, deploy_reward
from mmrlhf.rollout.prompts import PromptSource
from mmrlhf.rollout.worker import RolloutWorker, ScoringFailed, serve_scorer
from mmrlhf.stages.common import RunPaths, policy_path
from mmrlhf.stages.data import decode_images, load_split
from mmrlhf.stages.rl import rl_system
from mmrlhf.sync import state_dict_hash


class KillWorkerMidStep:
    """The real rollout group, except that at `kill_step` worker `index` is killed (and restarted
    by Ray) right after that step's generate calls were sent to the workers."""

    def __init__(self, group, kill_step: int, index: int) -> None:
        self.group, self.kill_step, self.index = group, kill_step, index

    def submit(self, records, samples_per_prompt, step):
        refs = self.group.submit(records, samples_per_prompt, step)
        if step == self.kill_step:
            ray.kill(self.group.workers[self.index], no_restart=False)
        return refs

    def collect(self, refs):
        return self.group.collect(refs)


def test_rollout_worker_killed_mid_step_is_restarted_with_the_current_policy(ray_cluster, tiny_run):
    rl = dataclasses.replace(tiny_run.rl, steps=2)
    steps = []
    with rl_system(tiny_run) as system:
        group = system.rollout_group
        train_loop(rl, system.prompts, KillWorkerMidStep(group, kill_step=1, index=1), system.learner_group,
                   system.weight_sync, system.kl_controller, lambda step, metrics, rollout: steps.append((step, rollout)))
        restarted = ray.get([w.restarted.remote() for w in group.workers])
        learner_hash = state_dict_hash(ray.get(system.learner_group.weights()))
        worker_hashes = group.weights_hashes()

    assert restarted == [False, True]
    assert [step for step, _ in steps] == [0, 1]
    _, killed = steps[1]
    assert killed.policy_version.tolist() == [1] * len(killed)  # the restarted worker loaded v1 first
    rows = [(step, p, s) for step, r in steps for p, s in zip(r.prompt_ids, r.sample_index)]
    assert len(set(rows)) == len(rows) == rl.steps * rl.prompts_per_step * rl.samples_per_prompt
    assert all(torch.isfinite(r.scores).all() for _, r in steps)
    assert worker_hashes == [learner_hash] * rl.rollout_workers


def _scoring_inputs(cfg, n=4):
    """(images, responses, references, prompts) of n feedback records."""
    pool = load_split(cfg, "feedback").slice(0, n)
    return (decode_images(pool, cfg.data.media), ["four one", "two", "", "seven seven seven"][:n],
            pool.column("reference").to_pylist(), pool.column("prompt").to_pylist())


def _reward_app(cfg, **health):
    return build_reward_app(RunPaths(cfg.run_dir).reward_model, max_batch_size=8, replicas=1,
                            ray_actor_options={"num_cpus": 0.5}, **health)


def test_unhealthy_then_hung_reward_replica_is_replaced_and_calls_are_retried(ray_cluster, tiny_run):
    handle = deploy_reward(_reward_app(tiny_run, health_check_period_s=1.0, health_check_timeout_s=2.0),
                           name="reward-faults")
    try:
        # Generous retries (about 90 s in all): a replacement replica starts slowly on a busy 2-core machine.
        score = serve_scorer("reward-faults", timeout_s=5.0, retries=10)
        inputs = _scoring_inputs(tiny_run)
        expected = score(*inputs)["total"].tolist()
        failing = handle.inject_fault.remote("fail").result()
        assert score(*inputs)["total"].tolist() == expected  # retried until a new replica answered
        hung = handle.inject_fault.remote("hang").result()
        assert hung != failing
        assert score(*inputs)["total"].tolist() == expected  # timed out, retried, answered by the replacement
        assert handle.replica_id.remote().result() not in (failing, hung)
    finally:
        serve.delete("reward-faults")


def test_samples_that_cannot_be_scored_are_left_unscored_not_zero(ray_cluster, tiny_run):
    # Health checks far apart: Serve will not replace the hung replica during the test.
    handle = deploy_reward(_reward_app(tiny_run, health_check_period_s=3600.0, health_check_timeout_s=3600.0),
                           name="reward-stuck")
    threads = torch.get_num_threads()
    try:
        handle.inject_fault.remote("hang").result()
        with pytest.raises(ScoringFailed, match="2 tries failed"):
            serve_scorer("reward-stuck", timeout_s=1.0, retries=1)(*_scoring_inputs(tiny_run))
        worker = RolloutWorker(str(policy_path(tiny_run, "sft")), lambda: serve_scorer("reward-stuck", timeout_s=1.0, retries=0),
                               seed=0, temperature=1.0, max_new_tokens=4, media=tiny_run.data.media)
        records = PromptSource(load_split(tiny_run, "feedback"), 2, seed=0).next_batch()
        rollout = worker.generate(records, samples_per_prompt=2, step=0)
        assert len(rollout) == 4 and torch.isnan(rollout.scores).all()  # dropped from learning, never 0
        assert rollout.source_scores == {}  # no source answered
    finally:
        torch.set_num_threads(threads)
        handle.inject_fault.remote("none").result()
        serve.delete("reward-stuck")
