import pytest

from mmrlhf.agents.algorithm import algorithm_config, clip_frames
from mmrlhf.agents.config import AgentConfig, load_agent_config
from mmrlhf.cli import main
from mmrlhf.config import ConfigError


@pytest.mark.parametrize("job, algorithm, env_id", [("agent_cartpole", "ppo", "CartPole-v1"),
                                                    ("agent_pendulum", "sac", "Pendulum-v1")])
def test_agent_jobs_load_and_build_their_rllib_config(job, algorithm, env_id):
    cfg = load_agent_config(f"jobs/{job}.yaml")
    assert isinstance(cfg, AgentConfig) and (cfg.rl.algorithm, cfg.env.env_id) == (algorithm, env_id)
    rllib = algorithm_config(cfg)
    assert rllib.algo_class.__name__.lower() == algorithm
    assert rllib.env_config["clip_frames"] == clip_frames(env_id, cfg.env.clip_seconds)


def test_clips_of_one_second_follow_each_env_render_fps():
    assert clip_frames("CartPole-v1", 1.0) == 50 and clip_frames("Pendulum-v1", 2.0) == 60


@pytest.mark.parametrize("override, message", [
    ("rl.algorithm=dqn", "rl.algorithm: got 'dqn', expected one of ppo, sac"),
    ("env.clip_seconds=3", "env.clip_seconds: got 3.0, expected seconds in [1, 2]"),
    ("preferences.label_noise=2", "preferences.label_noise: got 2.0, expected a probability in [0, 1]"),
    ("env.render_action=false", "env.render_action: got False, expected true unless env_id is one of Pendulum-v1"),
    ("env.frame_stack=5", "env.frame_stack: got 5, expected an integer in [1, 4]"),
    ("preferences.augment_shift=9", "preferences.augment_shift: got 9, expected pixels in [0, 8]"),
    ("rl.envsteps=5", "rl.envsteps: unknown key; allowed here: algorithm, env_steps"),
])
def test_malformed_agent_config_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_agent_config("jobs/agent_cartpole.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_agent_train_cli_exits_2_with_the_config_error_before_starting_ray(capsys):
    assert main(["agent", "train", "--config", "jobs/agent_pendulum.yaml", "reward=human"]) == 2
    assert capsys.readouterr().err.strip() == "mmrlhf: config error: reward: got 'human', expected one of learned, env"
