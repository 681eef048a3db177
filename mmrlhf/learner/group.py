"""The learner group: M `LearnerWorker` ranks as Ray actors in one placement group.

Follows the hand-made actor group of OpenRLHF (`trainer/ray/launcher.py`): a placement group
with one bundle per rank, packed onto as few nodes as possible (Ray docs, "Placement Groups",
strategy PACK); rank 0's node and a free port there are the `torch.distributed` rendezvous; all
ranks are then created at once, since each constructor blocks until the whole world has joined.
The driver shards each batch by rank (contiguous blocks) and gets back metrics already
all-reduced by the ranks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from ray import ObjectRef
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor, nn

from mmrlhf.learner.worker import LearnerWorker, LossFn, shard_batch

SHUTDOWN_TIMEOUT_S = 30.0


class LearnerRankDied(RuntimeError):
    """A learner rank's actor died; the group cannot go on (its collectives need every rank).

    `rank` names it; the message says how to continue (`--resume` from the last checkpoint).
    """

    def __init__(self, rank: int, err: RayActorError) -> None:
        super().__init__(
            f"learner rank {rank} died ({type(err).__name__}); the learner group "
            "cannot continue without it, so the run stops here. Continue with `--resume` from the "
            "last complete checkpoint."
        )
        self.rank = rank


def _get_fail_fast(
    refs: list[ObjectRef], timeout_s: float | None = None, ranks: Sequence[int] | None = None
) -> list[Any]:
    """`ray.get(refs)`, but raise the first rank error as soon as it happens.

    A plain `ray.get` on all ranks would wait for the healthy ranks, which sit in a collective
    waiting for the failed one until the process-group timeout (30 minutes by default).
    ranks: the rank of each ref (default 0, 1, ...), for the error message.
    Raises the first rank's error: LearnerRankDied naming the rank when its actor died, else
    what the rank raised; GetTimeoutError when not all are done within `timeout_s` seconds
    (None: no limit).
    """
    ranks = list(range(len(refs))) if ranks is None else list(ranks)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            raise GetTimeoutError(
                f"{len(pending)} of {len(refs)} ranks not done within {timeout_s}s"
            )
        try:
            ray.get(done)
        except RayActorError as err:
            raise LearnerRankDied(ranks[refs.index(done[0])], err) from err
    return ray.get(refs)


class LearnerGroup:
    """`num_ranks` DeepSpeed ranks (Ray actors) training one model data-parallel.

    model_factory: builds the full model on each rank (same seed everywhere). ds_config: from
    `learner.engine.deepspeed_config`; its micro-batch size times gradient accumulation times
    num_ranks is the batch size `train_step` expects. cpus_per_rank, gpus_per_rank: Ray
    resources per rank (also the placement-group bundle); with no GPUs the ranks get
    `DS_ACCELERATOR=cpu` in their `runtime_env` and use gloo, with GPUs nccl.
    resources: extra custom Ray resources per rank, e.g. {"learner_node": 1}.
    worker_cls, worker_kwargs: the rank class (a `LearnerWorker` subclass such as PPO's
    `PPOLearner`) and its extra constructor arguments. sync_method: the rank method whose result
    `weights()` publishes (the RL group's is `policy_state_dict_for_sync`: no value or Q heads).
    ready_timeout_s: seconds to wait for the placement group, then for all ranks to be up.
    Raises RuntimeError naming what was asked for when the cluster can't place the ranks or
    they fail or don't come up in time; nothing is left behind in that case.
    After any rank raises, the others may be stuck in a collective: call `shutdown()`.
    """

    def __init__(
        self,
        num_ranks: int,
        model_factory: Callable[[], nn.Module],
        ds_config: dict,
        cpus_per_rank: float = 1,
        gpus_per_rank: float = 0,
        resources: dict[str, float] | None = None,
        seed: int = 0,
        ready_timeout_s: float = 300.0,
        worker_cls: type[LearnerWorker] = LearnerWorker,
        worker_kwargs: dict[str, Any] | None = None,
        sync_method: str = "state_dict_for_sync",
    ) -> None:
        if num_ranks < 1:
            raise ValueError(f"LearnerGroup: num_ranks={num_ranks}, must be >= 1")
        self.num_ranks = num_ranks
        self.sync_method = sync_method
        self.workers: list[ray.actor.ActorHandle] = []
        self._failed = False
        bundle = {"CPU": cpus_per_rank, **({"GPU": gpus_per_rank} if gpus_per_rank else {})}
        bundle.update(resources or {})
        self._placement_group = placement_group(
            [dict(bundle) for _ in range(num_ranks)], strategy="PACK"
        )
        try:
            ray.get(self._placement_group.ready(), timeout=ready_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise RuntimeError(
                f"LearnerGroup: could not place {num_ranks} ranks of {bundle} within "
                f"{ready_timeout_s}s; cluster has {ray.cluster_resources()}"
            ) from None
        except BaseException:  # interrupted while waiting: the placement group must not outlive us
            self.shutdown()
            raise

        def in_bundle(rank: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(
                self._placement_group, placement_group_bundle_index=rank
            )

        master_addr, master_port = ray.get(
            ray.remote(LearnerWorker.get_address_and_port)
            .options(num_cpus=0, scheduling_strategy=in_bundle(0))
            .remote()
        )
        # DeepSpeed picks its accelerator when first imported, so the variable has to be in
        # the actor's environment from the start, not set by the constructor.
        runtime_env = {} if gpus_per_rank else {"env_vars": {"DS_ACCELERATOR": "cpu"}}
        actor_cls = ray.remote(worker_cls)
        self.workers = [
            actor_cls.options(
                num_cpus=cpus_per_rank,
                num_gpus=gpus_per_rank,
                resources=resources or {},
                runtime_env=runtime_env,
                scheduling_strategy=in_bundle(rank),
            ).remote(rank, num_ranks, master_addr, master_port, model_factory, ds_config, seed,
                     **(worker_kwargs or {}))
            for rank in range(num_ranks)
        ]
        try:
            self.rank_info: list[dict] = self._collect(
                [w.describe.remote() for w in self.workers], timeout_s=ready_timeout_s
            )
        except Exception as err:
            self.shutdown()
            raise RuntimeError(
                f"LearnerGroup: {num_ranks} ranks failed to finish DeepSpeed init "
                f"(rendezvous at {master_addr}:{master_port}): {err}"
            ) from err

    def run(self, method_name: str, *batches: dict[str, Tensor], **kwargs: Any) -> list[Any]:
        """Call `method_name` on every rank at once and return the per-rank results, rank order.

        batches: dicts of tensors {key: (B, ...)}; rank r receives `shard_batch(b, r, M)` of each
        as positional arguments, M = num_ranks. kwargs: passed unchanged to every rank (e.g. a
        loss function). Raises the first rank's error as soon as it happens.
        """
        refs = [
            getattr(worker, method_name).remote(
                *(shard_batch(b, rank, self.num_ranks) for b in batches), **kwargs
            )
            for rank, worker in enumerate(self.workers)
        ]
        return self._collect(refs)

    def _collect(
        self, refs: list[ObjectRef], timeout_s: float | None = None, ranks: Sequence[int] | None = None
    ) -> list[Any]:
        try:
            return _get_fail_fast(refs, timeout_s, ranks)
        except Exception:
            # The other ranks may be stuck in a collective with the failed one for good.
            self._failed = True
            raise

    def train_step(self, batch: dict[str, Tensor], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on `batch` {key: (B, ...)}, sharded over the ranks.

        See `LearnerWorker.train_step`; returns its metrics, the same on every rank.
        """
        return self.run("train_step", batch, loss_fn=loss_fn)[0]

    def weights(self, method_name: str | None = None, **kwargs: Any) -> ObjectRef:
        """ObjectRef to rank 0's full state dict {name: CPU Tensor} (gathered under ZeRO-3).

        method_name: the rank method that returns it (rank 0) or None (others); default the
        group's `sync_method`. kwargs go to that method (e.g. `slots`, see
        `LearnerWorker.state_dict_for_sync`).
        Collective over the ranks; returns once every rank finished the gather. The dict stays
        in the object store: pass the ref on rather than fetching it into the driver.
        """
        refs = [getattr(worker, method_name or self.sync_method).remote(**kwargs) for worker in self.workers]
        self._collect(refs[1:], ranks=range(1, self.num_ranks))
        ray.wait(refs[:1], fetch_local=False)
        return refs[0]

    def param_hash(self) -> str:
        """`sync.state_dict_hash` of the full weights, computed on rank 0. Collective."""
        return self.run("get_param_hash")[0]

    def save_checkpoint(self, folder: str | Path) -> str:
        """Every rank writes its part of a checkpoint into `folder` (see
        `LearnerWorker.save_checkpoint`); returns the hash of the saved weights."""
        return self.run("save_checkpoint", folder=str(folder))[0]

    def load_checkpoint(self, folder: str | Path) -> str:
        """Every rank loads its part of the checkpoint in `folder`; returns the weights' hash."""
        return self.run("load_checkpoint", folder=str(folder))[0]

    def shutdown(self) -> None:
        """Leave the process group on every rank, kill the actors, remove the placement group.

        Waits at most SHUTDOWN_TIMEOUT_S for the ranks to leave cleanly, and not at all after a
        rank failed (the others can't leave cleanly then). Idempotent.
        """
        if self.workers:
            if not self._failed:
                refs = [worker.shutdown.remote() for worker in self.workers]
                ray.wait(refs, num_returns=len(refs), timeout=SHUTDOWN_TIMEOUT_S)
            for worker in self.workers:
                ray.kill(worker)
            self.workers = []
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)
            self._placement_group = None

    def __enter__(self) -> LearnerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
