"""RL on a real local Ray cluster with a policy of another VLM family: Serve reward, 2 rollout
workers, a 2-rank ZeRO-2 PPO learner group (jobs/tiny.yaml), then weight sync.

The tiny run's data and reward model are reused; its SFT policy is swapped for a tiny random
model of the family (`tests/models/families/builders.py`), so the lineage checks are forced.
"""

from __future__ import annotations

import shutil

import pytest
import ray

from mmrlhf.controller import train_loop
from mmrlhf.stages.common import policy_path
from mmrlhf.stages.rl import rl_system
from mmrlhf.sync import state_dict_hash
from tests.models.families import builders

from .conftest import clone_run


VISION_KEYS = {  # what each family's rollouts carry
    "qwen2_vl": {"pixel_values", "image_grid_thw"},
    "llava_onevision": {"pixel_values", "image_sizes", "batch_num_images"},
    "idefics3": {"pixel_values", "pixel_attention_mask"},
}


@pytest.mark.parametrize("family", sorted(VISION_KEYS))
def test_two_rl_steps_end_with_every_worker_holding_the_learners_weights(ray_cluster, tiny_run, tmp_path, family):
    cfg = clone_run(tiny_run, tmp_path / "run", [])
    sft = policy_path(cfg, "sft")
    shutil.rmtree(sft)
    getattr(builders, f"build_{family}")(sft)
    steps = []
    with rl_system(cfg, force=True) as system:
        group = system.rollout_group
        train_loop(cfg.rl, system.prompts, group, system.learner_group, system.weight_sync, system.kl_controller,
                   lambda step, metrics, rollout: steps.append((metrics, rollout)))
        learner_hash = state_dict_hash(ray.get(system.learner_group.weights()))
        worker_hashes, versions = group.weights_hashes(), group.versions()
    assert versions == [2] * cfg.rl.rollout_workers
    assert worker_hashes == [learner_hash] * cfg.rl.rollout_workers
    metrics, rollout = steps[0]
    assert set(rollout.vision) == VISION_KEYS[family]
    # step 0 samples with the weights the learner starts from: behaviour and learner log-probs agree
    assert metrics["rollout/logprob_mismatch"] < 1e-4
