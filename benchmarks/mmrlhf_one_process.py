"""Contender: the project's RL loop in one process, without Ray: the cost of the distribution.

The same code as the RL stage, run by ``benchmarks/ray_overhead.py`` (one process per
measurement; prints one JSON line, see :func:`contender.emit`): the controller's ``train_loop``,
one :class:`~mmrlhf.rollout.worker.RolloutWorker` object, the reward sources called in-process
(:class:`~mmrlhf.reward.sources.RewardSources`: the gold score, as on the Serve side), and one
learner rank object (:func:`~mmrlhf.learner.rl_group.rank_spec`: the same PPO/SAC class,
DeepSpeed engine and ZeRO stage, a world of one over gloo). Only Ray is missing: no actors,
no Serve, no object store. Weight sync hands the rollout worker the learner's gathered
policy weights directly. Both parts keep their one torch thread each, as in their actors.

    python benchmarks/mmrlhf_one_process.py --run-dir RUN --scratch DIR --set rl.algorithm=ppo
"""

from __future__ import annotations

import os
import time

LAUNCHED = time.time()  # before the heavy imports: they are part of the start-up
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported, as the learner actors get it

import contender  # noqa: E402
import numpy as np  # noqa: E402

from mmrlhf.algorithms.kl import FixedKLController  # noqa: E402
from mmrlhf.config import REWARD_VERSION  # noqa: E402
from mmrlhf.controller import train_loop  # noqa: E402
from mmrlhf.learner.rl_group import RLLearnerGroup, rank_spec  # noqa: E402
from mmrlhf.learner.worker import LearnerWorker  # noqa: E402
from mmrlhf.models.policy import pad_token_id  # noqa: E402
from mmrlhf.reward.sources import RewardSources  # noqa: E402
from mmrlhf.rollout.prompts import PromptSource  # noqa: E402
from mmrlhf.rollout.worker import RolloutWorker  # noqa: E402
from mmrlhf.stages.data import load_split, prepare_data  # noqa: E402
from mmrlhf.stages.rl import reward_sources, rl_inputs  # noqa: E402
from mmrlhf.types import Rollout  # noqa: E402


class LocalRollouts:
    """``RolloutGroup``'s ``submit``/``collect`` over one rollout worker in this process."""

    def __init__(self, worker: RolloutWorker, pad_id: int) -> None:
        self.worker, self.pad_token_id = worker, pad_id

    def submit(self, records: list[dict], samples_per_prompt: int, step: int) -> list[Rollout]:
        return [self.worker.generate(records, samples_per_prompt, step)]

    def collect(self, parts: list[Rollout]) -> Rollout:
        return Rollout.concat(parts, self.pad_token_id, parallel=True)


class LocalLearnerGroup(RLLearnerGroup):
    """``RLLearnerGroup``'s driver side (score normalisation, advantages) over one rank object."""

    def __init__(self, rl, policy_path: str, seed: int) -> None:
        spec = rank_spec(rl, policy_path)
        _, port = LearnerWorker.get_address_and_port()
        self.worker = spec["worker_cls"](0, 1, "127.0.0.1", port, spec["model_factory"], spec["ds_config"], seed,
                                         **spec["worker_kwargs"])
        self.sync_method, self.num_ranks, self.rl = spec["sync_method"], 1, rl

    def run(self, method_name: str, *batches, **kwargs) -> list:
        return [getattr(self.worker, method_name)(*batches, **kwargs)]

    def weights(self, method_name: str | None = None):
        return getattr(self.worker, method_name or self.sync_method)()


class LocalWeightSync:
    """``WeightSync.publish``: the learner's policy weights straight into the rollout worker."""

    def __init__(self, worker: RolloutWorker) -> None:
        self.worker = worker

    def publish(self, learner_group: LocalLearnerGroup, version: int, push: bool = True) -> dict[str, float]:
        start = time.perf_counter()
        self.worker.load_weights(version, learner_group.weights())
        return {"sync/seconds": time.perf_counter() - start, "sync/version": float(version)}


def main() -> None:
    args = contender.arguments(__doc__).parse_args()
    launched = args.launched_at or LAUNCHED
    cfg = contender.project_config(args)
    rl = cfg.rl
    entered = time.time()
    sft = rl_inputs(cfg, force=True)
    prepare_data(cfg, force=True)
    prompts = PromptSource(load_split(cfg, "feedback"), rl.prompts_per_step, cfg.seed)
    sources = RewardSources(reward_sources(cfg))

    def score(images, texts, references, prompt_texts) -> dict:
        return sources.score(images, texts, references, prompt_texts) | {REWARD_VERSION: np.zeros(len(texts))}

    worker = RolloutWorker(sft, lambda: score, cfg.seed, rl.temperature, rl.max_new_tokens,
                           cfg.data.media, top_p=rl.top_p, top_k=rl.top_k)
    learner = LocalLearnerGroup(rl, sft, cfg.seed)
    history: list[dict[str, float]] = []
    loop_start = time.time()
    train_loop(rl, prompts, LocalRollouts(worker, pad_token_id(sft)), learner, LocalWeightSync(worker),
               FixedKLController(rl.kl_coef), lambda step, metrics, rollout: history.append(metrics))
    contender.emit_history(launched, loop_start, history, args,
                           {"imports": entered - launched, "inputs and models": loop_start - entered})


if __name__ == "__main__":
    main()
