"""The learned-reward env against a real Serve deployment on the session's Ray cluster, and the
in-place weight swap while an RLlib PPO keeps training."""

import numpy as np
import math

import pytest
from ray import serve

from mmrlhf.agents.algorithm import algorithm_config
from mmrlhf.agents.config import load_agent_config
from mmrlhf.agents.env import find_wrapper, make_env
from mmrlhf.agents.frames import downsample
from mmrlhf.agents.reward_client import RewardCallError, RewardClient
from mmrlhf.agents.reward_model import FrameRewardEnsemble
from mmrlhf.agents.serve_reward import APP_NAME, deploy_frame_reward

SIZE = 32


@pytest.fixture(scope="module")
def deployment(ray_cluster, tmp_path_factory):
    """The frame reward deployment at version 0 with a seed-0 ensemble; yields (handle, ensemble, weights dir).
    Deleted after the module, so its replica's CPU share goes back to the session's cluster."""
    weights = tmp_path_factory.mktemp("frame_reward") / "v0"
    ensemble = FrameRewardEnsemble(members=3, size=SIZE, seed=0)
    ensemble.save(weights)
    yield deploy_frame_reward(weights, version=0, num_cpus=0.25), ensemble, weights
    serve.delete(APP_NAME)


def _env(learned=True, num_envs=2):
    return make_env({"env_id": "CartPole-v1", "num_envs": num_envs, "learned": learned, "frame_size": SIZE,
                     "clip_frames": 5, "attempts": 3})


def test_env_rewards_come_from_the_serve_deployment_one_call_per_vector_step(deployment):
    handle, ensemble, _ = deployment
    env = _env()
    env.reset(seed=0)
    calls = handle.calls.remote().result()
    obs, rewards, terminated, truncated, infos = env.step(np.array([0, 1]))
    frames = np.stack([downsample(f, SIZE) for f in env.env.render()])  # the state after the step
    np.testing.assert_allclose(rewards, ensemble.rewards(frames), rtol=1e-5)
    assert handle.calls.remote().result() == calls + 1
    assert infos["reward_version"].tolist() == [0, 0]
    assert infos["true_reward"].tolist() == [1.0, 1.0]
    assert obs.shape == (2, 4)  # the policy still sees the state vector


def test_env_cuts_clips_and_pads_a_terminated_episode_with_zero_true_reward(deployment):
    env = _env(num_envs=1)
    env.reset(seed=0)
    steps = 0
    while True:  # always push left: CartPole fails within ~10 steps
        _, _, terminated, _, infos = env.step(np.array([0]))
        steps += 1
        if terminated[0]:
            break
    clips = env.take_clips()
    assert infos["true_episode_return"][0] == steps
    assert sum(float(true.sum()) for _, true in clips) == steps
    assert len(clips) == math.ceil(steps / 5)
    assert all(frames.shape == (5, SIZE, SIZE) for frames, _ in clips)
    padding = len(clips) * 5 - steps  # the terminal frame repeated at true reward 0 (absorbing state)
    assert clips[-1][1].tolist() == [1.0] * (5 - padding) + [0.0] * padding
    assert (clips[-1][0][5 - padding:] == clips[-1][0][4 - padding]).all()


def test_failing_reward_call_is_retried_and_then_returns_the_real_reward(deployment):
    handle, ensemble, _ = deployment
    client = RewardClient(attempts=3, backoff_s=0.0)
    frames = np.zeros((2, SIZE, SIZE), np.uint8)
    before = handle.fail_next.remote(2).result()
    rewards, versions = client(frames)
    assert handle.calls.remote().result() == before + 3  # two failures, then the answer
    np.testing.assert_allclose(rewards, ensemble.rewards(frames), rtol=1e-5)


def test_reward_call_that_keeps_failing_raises_a_clear_error_not_a_zero_reward(deployment):
    handle, _, _ = deployment
    env = _env()
    env.score.backoff_s = 0.0
    env.reset(seed=0)
    handle.fail_next.remote(10).result()
    try:
        with pytest.raises(RewardCallError, match=r"reward deployment call failed 3 times; last error: .*failing on purpose"):
            env.step(np.array([0, 1]))
    finally:
        handle.fail_next.remote(0).result()


def test_weights_swap_in_place_while_rllib_trains_and_later_steps_use_the_new_model(deployment, tmp_path):
    handle, _, weights = deployment
    cfg = load_agent_config(None, [f"run_dir={tmp_path}", "env.num_envs=2", f"env.frame_size={SIZE}",
                                   "rl.train_batch_size=64", "rl.minibatch_size=32", "rl.num_epochs=1",
                                   "rl.hidden=[8]"])
    algo = algorithm_config(cfg).build_algo()
    try:
        wrapper = find_wrapper(algo.env_runner.env)
        algo.train()
        assert set(wrapper.versions_seen) == {0}
        calls = handle.calls.remote().result()
        new = FrameRewardEnsemble(members=3, size=SIZE, seed=1)
        deploy_frame_reward(new.save(tmp_path / "v1"), version=1, num_cpus=0.25)
        assert handle.calls.remote().result() == calls  # the same replica: its call count went on
        seen = len(wrapper.versions_seen)
        algo.train()  # the same algorithm object: RLlib was not restarted
        assert set(wrapper.versions_seen[seen:]) == {1}
        _, rewards, *_ = wrapper.step(np.array([0, 0]))
        frames = np.stack([downsample(f, SIZE) for f in wrapper.env.render()])
        np.testing.assert_allclose(rewards, new.rewards(frames), rtol=1e-5)
    finally:
        algo.stop()
        deploy_frame_reward(weights, version=0, num_cpus=0.25)
