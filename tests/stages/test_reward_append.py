"""`mmrlhf reward train --append`: continues from the saved reward model, as the next version."""

import pytest
import torch

from mmrlhf.config import load_config
from mmrlhf.models.reward import RewardModel
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.reward_train import reward_model_version, run_reward_training
from tests.stages.conftest import TINY, import_reference_pairs


def _weights(path):
    """The learned parameters (batch-norm running statistics move in any training pass, whatever the lr)."""
    return {k: v.detach().clone() for k, v in RewardModel.from_pretrained(path).named_parameters()}


def test_append_starts_from_the_saved_model_and_counts_the_version_up(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(TINY, [f"run_dir={run_dir}", "data.n_sft=8", "data.n_feedback=16", "reward.clip_epochs=0"])
    import_reference_pairs(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match="no trained reward model .* to continue from"):
        run_reward_training(cfg, append=True)
    first = run_reward_training(cfg)
    model_dir = RunPaths(run_dir).reward_model
    trained = _weights(model_dir)
    assert first["reward/version"] == 0 == reward_model_version(cfg)

    # a vanishing learning rate: what --append saves is the model it started from, not a fresh one
    still = load_config(TINY, [f"run_dir={run_dir}", "data.n_sft=8", "data.n_feedback=16",
                               "reward.clip_epochs=0", "reward.lr=1e-12"])
    again = run_reward_training(still, append=True)
    assert again["reward/version"] == 1 == reward_model_version(cfg)
    assert again["reward/val_accuracy"] == first["reward/val_accuracy"]
    for name, value in _weights(model_dir).items():
        torch.testing.assert_close(value, trained[name], msg=name)
    assert run_reward_training(cfg, append=True)["reward/version"] == 2
