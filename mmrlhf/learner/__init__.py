"""Learner group: DeepSpeed ZeRO ranks as Ray actors (engine setup, one rank, the group)."""

from mmrlhf.learner.engine import backend, deepspeed_config, gather_full_state_dict, init_engine
from mmrlhf.learner.group import LearnerGroup
from mmrlhf.learner.worker import LearnerWorker, LossFn, shard_batch

__all__ = [
    "LearnerGroup",
    "LearnerWorker",
    "LossFn",
    "backend",
    "deepspeed_config",
    "gather_full_state_dict",
    "init_engine",
    "shard_batch",
]
