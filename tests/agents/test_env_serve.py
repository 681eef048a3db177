"""The learned-reward env against a real Serve deployment on the session's Ray cluster, and the
in-place weight swap while an RLlib PPO keeps training."""

import numpy as np
import math

import gymnasium as gym
import pytest
from gymnasium.vector import SyncVectorEnv
from ray import serve

from mmrlhf.agents.algorithm import algorithm_config
from mmrlhf.agents.config import load_agent_config
from mmrlhf.agents.env import LearnedRewardVectorEnv, find_wrapper, make_env
from mmrlhf.agents.frames import downsample
from mmrlhf.agents.reward_client import RewardCallError, RewardClient
from mmrlhf.agents.reward_loop import relabel_replay_buffer
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


def _buffer_rewards_and_frames(buffer):
    """Every transition of the buffer: (rewards (N,), the frame after each step (N, S, S))."""
    rewards = np.concatenate([episode.get_rewards() for episode in buffer.episodes])
    frames = np.stack([info["frame"] for episode in buffer.episodes for info in episode.get_infos()[1:]])
    return rewards, frames


def test_sac_replay_buffer_is_relabelled_with_the_new_reward_model(deployment, tmp_path):
    _, ensemble, _ = deployment
    cfg = load_agent_config(None, [f"run_dir={tmp_path}", "env.env_id=Pendulum-v1", "env.num_envs=2",
                                   f"env.frame_size={SIZE}", "env.reward_scale=3", "rl.algorithm=sac",
                                   "rl.train_batch_size=16", "rl.learning_starts=20", "rl.hidden=[8]"])
    algo = algorithm_config(cfg).build_algo()
    try:
        algo.train()
        buffer = algo.local_replay_buffer
        rewards, frames = _buffer_rewards_and_frames(buffer)
        assert len(rewards) == buffer.get_num_timesteps() > 20
        # the stored frame of step t is the one the wrapper scored for reward t (served model v0)
        np.testing.assert_allclose(rewards, [3 * ensemble.rewards(f[None])[0] for f in frames], rtol=1e-5)
        new = FrameRewardEnsemble(members=3, size=SIZE, seed=1)
        assert relabel_replay_buffer(buffer, new, "identity", 3.0) == len(rewards)
        relabelled, same_frames = _buffer_rewards_and_frames(buffer)
        np.testing.assert_array_equal(same_frames, frames)
        np.testing.assert_allclose(relabelled, [3 * new.rewards(f[None])[0] for f in frames], rtol=1e-5)
        assert not np.allclose(relabelled, rewards)
        sampled = buffer.sample(num_items=64, n_step=1, gamma=0.99, sample_episodes=True)  # as SAC samples
        batch_rewards = np.concatenate([episode.get_rewards() for episode in sampled])
        assert np.abs(batch_rewards[:, None] - relabelled[None]).min(axis=1).max() < 1e-5  # each is a new reward
    finally:
        algo.stop()


def test_relabel_names_the_episode_whose_steps_carry_no_frame(deployment, tmp_path):
    cfg = load_agent_config(None, [f"run_dir={tmp_path}", "env.env_id=Pendulum-v1", "env.num_envs=1",
                                   f"env.frame_size={SIZE}", "rl.algorithm=sac", "reward=env",
                                   "rl.train_batch_size=16", "rl.learning_starts=20", "rl.hidden=[8]"])
    algo = algorithm_config(cfg).build_algo()  # the true-reward env renders no frames
    try:
        algo.train()
        with pytest.raises(KeyError, match="episode .* without a 'frame'.*frames_in_infos"):
            relabel_replay_buffer(algo.local_replay_buffer, deployment[1], "identity", 1.0)
    finally:
        algo.stop()


def test_wrapper_stacks_each_sub_envs_last_frames_and_restarts_the_stack_after_a_reset():
    ensemble = FrameRewardEnsemble(members=2, size=SIZE, seed=0, channels=2)
    vector = SyncVectorEnv([lambda: gym.make("CartPole-v1", render_mode="rgb_array") for _ in range(2)])
    env = LearnedRewardVectorEnv(vector, lambda f: (ensemble.rewards(f), np.zeros(len(f), np.int64)),
                                 frame_size=SIZE, frame_stack=2, frames_in_infos=True)
    env.reset(seed=0)
    seen = []  # per step: (the frames rendered after it (2, S, S), the stacks scored (2, 2, S, S), autoreset)
    for _ in range(40):  # always push left: each sub-env fails within ~10 steps and is reset
        _, rewards, terminated, truncated, infos = env.step(np.array([0, 0]))
        rendered = np.stack([downsample(f, SIZE) for f in vector.render()])
        np.testing.assert_allclose(rewards, ensemble.rewards(infos["frame"]), rtol=1e-5)
        seen.append((rendered, infos["frame"], terminated | truncated))
    first_frames, first_stacks, _ = seen[0]
    np.testing.assert_array_equal(first_stacks, np.stack([first_frames, first_frames], axis=1))  # no motion yet
    restarts = 0
    for (previous, _, done), (frames, stacks, _) in zip(seen, seen[1:]):
        for i in range(2):
            expected_oldest = frames[i] if done[i] else previous[i]  # a reset step starts a new stack
            np.testing.assert_array_equal(stacks[i], np.stack([expected_oldest, frames[i]]))
            restarts += int(done[i])
    assert restarts >= 2


def test_hidden_action_leaves_the_torque_arrow_out_of_the_scored_frames_only():
    ensemble = FrameRewardEnsemble(members=1, size=SIZE, seed=0)
    vector = SyncVectorEnv([lambda: gym.make("Pendulum-v1", render_mode="rgb_array")])
    env = LearnedRewardVectorEnv(vector, lambda f: (ensemble.rewards(f), np.zeros(len(f), np.int64)),
                                 frame_size=SIZE, frames_in_infos=True, hide_action="last_u")
    env.reset(seed=0)
    _, _, _, _, infos = env.step(np.array([[2.0]], np.float32))  # full torque: the env would draw its arrow
    pendulum = vector.envs[0].unwrapped
    assert pendulum.last_u is None
    np.testing.assert_array_equal(infos["frame"][0], downsample(vector.render()[0], SIZE))
    pendulum.last_u = 2.0
    assert not np.array_equal(infos["frame"][0], downsample(vector.render()[0], SIZE))  # the arrow shows
