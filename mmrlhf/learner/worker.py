"""One learner rank: a DeepSpeed engine over a model, driven by a loss function passed in.

`LearnerWorker` is a plain class; `learner/group.py` turns it into a Ray actor with
`ray.remote(...)(LearnerWorker)`, one per rank. Algorithms stay out of it and come in as
functions: a step is `train_step(batch, loss_fn)` with any `loss_fn(model, batch) -> (loss,
metrics)`, and other per-rank work is `call(batch, fn=...)`. An algorithm that keeps state on
the rank (PPO's experience, SAC's replay buffer and reference policy) subclasses it once:
`learner/ppo.py`, `learner/sac.py`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mmrlhf.checkpoint import WEIGHTS_FILE
from mmrlhf.learner.engine import (
    decode_rng,
    encode_rng,
    gather_full_state_dict,
    init_distributed,
    init_engine,
    load_engine_checkpoint,
    save_engine_checkpoint,
)
from mmrlhf.sync import SharedStateDict, WeightPublisher, state_dict_hash
from mmrlhf.weight_slots import SlotWeights

LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, float | Tensor]]]
POLICY_PREFIX = "policy."


def all_reduce_sum(*values: float | Tensor) -> list[float]:
    """Each value summed over all ranks (one float64 all-reduce); collective, every rank calls it."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def block_permutation(n: int, block: int, generator: torch.Generator) -> Tensor:
    """A random order of ``n`` rows that keeps aligned blocks of ``block`` consecutive rows together.

    The blocks ``[k·block, (k+1)·block)`` (the last possibly shorter) are shuffled as units and
    each keeps its rows in order: ``(n,)`` int64, a permutation of ``0..n-1``. ``block=1`` is
    ``torch.randperm(n, generator=generator)``. Raises ValueError for ``block < 1``.
    """
    if block < 1:
        raise ValueError(f"block_permutation: block={block}, expected an integer >= 1 (rows)")
    blocks = torch.randperm(-(-n // block), generator=generator)
    rows = (blocks[:, None] * block + torch.arange(block)).flatten()  # (blocks * block,)
    return rows[rows < n]


def shard_batch(batch: dict[str, Tensor], rank: int, world_size: int) -> dict[str, Tensor]:
    """Block `rank` of `world_size` contiguous equal blocks along dim 0 of every tensor in `batch`.

    batch: {key: (B, ...)} with the same B for all keys, B divisible by `world_size`.
    Returns {key: (B // world_size, ...)} (views, no copy); rank r gets rows
    [r * B // world_size, (r + 1) * B // world_size). Also splits a shard into micro-batches.
    Raises TypeError for a value that isn't a tensor with a batch dimension, ValueError for an
    empty batch or unequal or indivisible leading sizes, naming the keys.
    """
    sizes = {}
    for key, value in batch.items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise TypeError(f"shard_batch: batch[{key!r}] must be a tensor with a batch dimension")
        sizes[key] = value.shape[0]
    if not sizes:
        raise ValueError("shard_batch: batch is empty")
    size = next(iter(sizes.values()))
    if any(s != size for s in sizes.values()):
        raise ValueError(f"shard_batch: leading sizes differ across keys: {sizes}")
    if size % world_size:
        raise ValueError(
            f"shard_batch: batch size {size} does not split into {world_size} equal blocks"
        )
    block = size // world_size
    return {key: value[rank * block : (rank + 1) * block] for key, value in batch.items()}


class LearnerWorker:
    """One data-parallel rank of the learner group (DeepSpeed ZeRO stage from the config).

    rank, world_size: this rank's index and the number of ranks. master_addr, master_port:
    rank 0's node IP and a free TCP port there (`get_address_and_port`), the rendezvous of
    `torch.distributed` (env:// init). model_factory: builds the full model; called after
    `torch.manual_seed(seed)` so every rank starts from the same weights. ds_config: from
    `learner.engine.deepspeed_config`.
    `generator` (seeded with `seed`, the same on every rank) orders minibatches and samples
    replay rows, so all ranks take the same number of steps.
    Construction is collective: it blocks until all `world_size` ranks have joined, so create
    all ranks concurrently. Raises whatever `torch.distributed` raises on a failed rendezvous
    (e.g. a timeout when a rank never comes up).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_factory: Callable[[], nn.Module],
        ds_config: dict,
        seed: int = 0,
    ) -> None:
        # Each rank runs in its own Ray actor, which sees only its own GPU(s) through
        # CUDA_VISIBLE_DEVICES, so its local device index is always 0.
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(world_size),
        )
        init_distributed()
        self.rank = rank
        self.world_size = world_size
        torch.manual_seed(seed)
        self.engine = init_engine(model_factory(), ds_config)
        self.generator = torch.Generator().manual_seed(seed)
        self._publisher = WeightPublisher()  # rank 0's side of weight sync

    @staticmethod
    def get_address_and_port() -> tuple[str, int]:
        """(this node's IP as Ray sees it, a TCP port free on it right now).

        Run on rank 0's node (a Ray task in rank 0's placement-group bundle). The port is
        released before `torch.distributed` binds it, so another process could take it in
        between; the rendezvous then fails with "address already in use" and the group can
        be created again.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def describe(self) -> dict:
        """Rank facts: rank, world_size, backend, zero_stage, local/full parameter counts.

        `local_numel` counts the parameter elements this rank holds: under ZeRO-3 about
        full_numel / world_size (the rest lives on other ranks), otherwise full_numel.
        """
        params = list(self.engine.module.parameters())
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "backend": torch.distributed.get_backend(),
            "zero_stage": self.engine.zero_optimization_stage(),
            "local_numel": sum(p.numel() for p in params),
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        }

    def call(self, *batches: dict[str, Tensor], fn: Callable[..., Any], **kwargs: Any) -> Any:
        """`fn(engine, *batches, **kwargs)` on this rank: the hook for work other than a step.

        E.g. an evaluation pass over this rank's shard, run on every rank with
        `LearnerGroup.run("call", batch, fn=...)`.
        Under ZeRO-3 a forward pass is collective, so every rank must run the same calls.
        """
        return fn(self.engine, *batches, **kwargs)

    def train_step(self, batch: dict[str, Tensor], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on this rank's shard, through the DeepSpeed engine.

        batch: this rank's shard, {key: (B_rank, ...)}; it is split into the config's
        `gradient_accumulation_steps` equal micro-batches (the shard size, not the config's
        micro-batch size, decides how big they are). loss_fn(model, micro_batch) returns
        (scalar loss, {metric: float or 0-dim tensor}); `model` is the engine, whose call runs
        the module's forward under ZeRO's hooks and whose attributes fall through to the module.
        DeepSpeed averages gradients over micro-batches and ranks, so with equal shards the step
        equals one step on the whole batch's mean loss.
        Collective: every rank must call it with a shard of the same size, and `loss_fn` must
        return the same metric keys on every rank (they are all-reduced as one vector).
        Returns the mean over micro-batches and ranks of {"learner/loss", **metrics}, plus
        "learner/grad_norm" (global L2 norm before clipping) when the ZeRO stage reports one
        (stages 1-3; not stage 0).
        Raises ValueError when the shard doesn't split into the micro-batches.
        """
        accum = self.engine.gradient_accumulation_steps()
        sums: dict[str, float] = {}
        for i in range(accum):
            micro_batch = shard_batch(batch, i, accum)
            loss, metrics = loss_fn(self.engine, micro_batch)
            self.engine.backward(loss)
            self.engine.step()
            for key, value in {"learner/loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / accum
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            sums["learner/grad_norm"] = float(grad_norm)
        return self._mean_across_ranks(sums)

    def _mean_across_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = sorted(metrics)
        values = torch.tensor(
            [metrics[k] for k in keys], dtype=torch.float64, device=self.engine.device
        )
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return {k: v / self.world_size for k, v in zip(keys, values.tolist())}

    def state_dict_for_sync(self, slots: str | None = None) -> SharedStateDict | SlotWeights | None:
        """Full CPU weights on rank 0 (see `engine.gather_full_state_dict`), None on others.
        Collective under ZeRO-3: call it on every rank.

        slots: None returns a `SharedStateDict` (the object store carries it); a prefix copies the
        weights into this rank's `WeightSlots` of that name and returns the small `SlotWeights`,
        or the `SharedStateDict` when a reader still holds the free slot (see `mmrlhf.weight_slots`).
        """
        return self._shared_weights("", slots)

    def policy_state_dict_for_sync(self, slots: str | None = None) -> SharedStateDict | SlotWeights | None:
        """Rank 0: the full weights of the model's `policy` sub-module (no value or Q heads) under
        the policy's own key names, what rollout workers load; None on others. Collective.
        slots: as in `state_dict_for_sync`."""
        return self._shared_weights(POLICY_PREFIX, slots)

    def _shared_weights(self, prefix: str, slots: str | None) -> SharedStateDict | SlotWeights | None:
        # Not copied where ZeRO does not partition them: these views of the live weights are
        # serialised into the object store when the actor method returns, before any later call
        # can change them (or copied into a slot right here).
        full = gather_full_state_dict(self.engine, copy=False)
        if self.rank != 0:
            return None
        return self._publisher.shareable({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, slots)

    def get_param_hash(self) -> str | None:
        """`sync.state_dict_hash` of the full weights on rank 0, None on others. Collective."""
        full = gather_full_state_dict(self.engine)
        return state_dict_hash(full) if self.rank == 0 else None

    def rng_state(self) -> dict[str, Tensor]:
        """This rank's RNG states by name (uint8 tensors): torch's global one and `generator`."""
        return {"torch": torch.get_rng_state(), "minibatch_order": self.generator.get_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `rng_state` returned."""
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["minibatch_order"])

    def save_checkpoint(self, folder: str) -> str | None:
        """Write this rank's part of a checkpoint into `folder`; collective, every rank calls it.

        Rank 0 writes the full weights (gathered under ZeRO-3) to `WEIGHTS_FILE` (safetensors);
        every rank writes DeepSpeed's state (`engine.save_engine_checkpoint`) and its RNG states
        to `rng_rank<r>.json`. Returns `sync.state_dict_hash` of the weights on rank 0, else None.
        """
        folder_path = Path(folder)
        full = gather_full_state_dict(self.engine)
        digest = None
        if self.rank == 0:
            save_file({k: v.contiguous() for k, v in full.items()}, str(folder_path / WEIGHTS_FILE))
            digest = state_dict_hash(full)
        save_engine_checkpoint(self.engine, folder_path)
        rng = {name: encode_rng(value) for name, value in self.rng_state().items()}
        (folder_path / f"rng_rank{self.rank}.json").write_text(json.dumps(rng))
        return digest

    def load_checkpoint(self, folder: str) -> str | None:
        """Load what `save_checkpoint` wrote (same world size and ZeRO stage); collective.

        Returns the hash of the weights now held, on rank 0 (else None), for the caller to
        compare with the saved one. Raises FileNotFoundError for a missing part, ValueError for
        a DeepSpeed file holding more than tensors (see `engine.SafeTorchCheckpointEngine`).
        """
        folder_path = Path(folder)
        rng_file = folder_path / f"rng_rank{self.rank}.json"
        if not rng_file.is_file():
            raise FileNotFoundError(f"{folder}: no {rng_file.name}; saved with fewer learner ranks?")
        load_engine_checkpoint(self.engine, folder_path)
        self.set_rng_state({name: decode_rng(text) for name, text in json.loads(rng_file.read_text()).items()})
        return self.get_param_hash()

    def shutdown(self) -> None:
        """Leave the process group, so the actor can exit without a dangling communicator, and
        delete rank 0's weight slots."""
        self._publisher.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
