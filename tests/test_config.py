"""Typed config: three layers, one-line errors naming the key, every job file loads."""

from pathlib import Path

import pytest

from mmrlhf.cli import build_parser
from mmrlhf.config import ConfigError, RewardSourceConfig, RunConfig, load_config, uses_model

JOBS = sorted(Path(__file__).resolve().parents[1].joinpath("jobs").glob("*.yaml"))
# agent_*.yaml are `mmrlhf agent train` jobs (AgentConfig, tests/agents/test_agent_config.py)
JOB_CONFIGS = [p for p in JOBS if p.name != "runtime_env.yaml" and not p.name.startswith("agent_")]


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    yaml = tmp_path / "x.yaml"
    yaml.write_text("rl:\n  steps: 7\n  lr: 0.5\n")
    cfg = load_config(yaml, ["rl.steps=3", "model.policy=tiny"])
    assert isinstance(cfg, RunConfig)
    assert cfg.rl.steps == 3          # override beats YAML
    assert cfg.rl.lr == 0.5           # YAML beats default
    assert cfg.model.policy == "tiny"
    assert cfg.rl.clip_eps == RunConfig().rl.clip_eps  # default kept


def test_reward_sources_default_to_the_model_and_are_set_by_one_dotted_override():
    assert RunConfig().reward.sources == [RewardSourceConfig("model", 1.0)]
    # as the shell hands it over from: mmrlhf rl reward.sources='[{name: "mmrlhf.data.digits:gold_reward", ...}]'
    override = 'reward.sources=[{name: "mmrlhf.data.digits:gold_reward", weight: 1.0}, {name: model, weight: 0}]'
    args = build_parser().parse_args(["rl", override])
    cfg = load_config(args.config, args.overrides)
    assert cfg.reward.sources == [RewardSourceConfig("mmrlhf.data.digits:gold_reward", 1.0),
                                  RewardSourceConfig("model", 0.0)]
    assert [s.label for s in cfg.reward.sources] == ["gold_reward", "model"]


def test_clipscore_is_a_source_that_needs_the_reward_models_weights():
    cfg = load_config(None, ["reward.sources=[{name: clipscore, weight: 1.0}]"])
    assert cfg.reward.sources == [RewardSourceConfig("clipscore", 1.0)] and cfg.reward.sources[0].label == "clipscore"
    assert uses_model(cfg.reward.sources)
    assert not uses_model([RewardSourceConfig("mmrlhf.data.digits:gold_reward", 1.0)])


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_every_job_config_loads(path):
    assert isinstance(load_config(path), RunConfig)


@pytest.mark.parametrize(
    "override, names",
    [
        (["rl.stepz=4"], ["rl.stepz", "steps"]),
        (["rl.steps=abc"], ["rl.steps", "Integer"]),
        (["rl.zero_stage=5"], ["rl.zero_stage", "0, 1, 2, 3"]),
        (["rl.kl_estimator=k9"], ["rl.kl_estimator", "k1, k2, k3"]),
        (["data.min_digits=9"], ["data.min_digits"]),
        (["nonsense"], ["nonsense", "key=value"]),
        (["reward.val_fraction=1.5"], ["reward.val_fraction", "(0, 1)"]),
        (["model.reward=ViT-L-14", "model.reward_pretrained=laion2b_s32b_b82"], ["model.reward_pretrained", "laion2b_s32b_b82k"]),
        (["resources.learner_resource=GPU"], ["resources.learner_resource", "custom resource"]),
        (["rl.asynchronous=true"], ["rl.max_policy_lag", ">= 1 with rl.asynchronous"]),
        (["rl.tis_cap=0.5"], ["rl.tis_cap", ">= 1"]),
        (["rl.lr=inf"], ["rl.lr", "finite"]),
        (["data.canvas=4"], ["data.canvas", ">= 8 * data.max_digits"]),
        (["rl.kl_coef=-1"], ["rl.kl_coef", ">= 0"]),
        (["rl.clip_eps=-0.5"], ["rl.clip_eps", "> 0"]),
        (["eval.batch_size=0"], ["eval.batch_size", "> 0"]),
        (["eval.n_review=-1"], ["eval.n_review", ">= 0"]),
        (["rl=3"], ["rl", "section", "rl.<key>=value"]),
        (["reward.sources=[]"], ["reward.sources:", "non-empty list"]),
        (["reward.sources=[{name: score}]"], ["reward.sources[0].name", "'package.module:function'"]),
        (["reward.sources=[{name: model}, {name: a.b:f, weight: .inf}]"], ["reward.sources[1].weight", "finite"]),
        (["reward.sources=[{name: model}, {name: model}]"], ["reward.sources[1].name", "reward.sources[0]"]),
        (["reward.sources=[{name: a.b:f}, {name: c:f}]"], ["reward.sources[1].name", "label 'f'"]),
        (["reward.sources=[{name: a:total}]"], ["reward.sources[0].name", "not named 'total'"]),
        (["reward.sources=[{name: model, weight: 0}]"], ["reward.sources[*].weight", "non-zero"]),
        (["reward.sources=[{nam: model}]"], ["reward.sources[].nam", "name, weight"]),
    ],
)
def test_bad_config_is_one_line_error_naming_the_key(override, names):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_yaml_whose_top_level_is_not_a_mapping_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- rl\n- data\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(path)


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
