"""Weight sync: the learner publishes `(version, weights)`, rollout workers load them.

After each update, rank 0 of the learner group gathers the full weights (ZeRO-3 included, see
`learner/engine.py`) and a transport makes them reachable by every rollout worker under a policy
version that only goes up. The driver-side `WeightSync` times the whole hop (`sync/seconds`).

Transports (one small interface, `WeightTransport`):
- `ObjectStoreTransport` (built, the default): the state dict lives once in the Ray object store
  (Ray docs, "Objects"); each rollout worker reads it from its node's shared-memory store.
- NCCL broadcast (NOT built): on GPU clusters the copy through host memory and the object store
  costs seconds for a billion parameters. The faster path is a process group separate from the
  DeepSpeed world group, made of learner rank 0 plus every rollout worker (e.g. with
  `ray.util.collective.create_collective_group(backend="nccl", ...)`, or a
  `torch.distributed` group with its own TCP store and port). `publish` would broadcast each
  tensor from rank 0's GPU and `latest` would return the version with the receivers' tensors.
  It must never reuse the DeepSpeed world group: rollout workers are not DeepSpeed ranks, and a
  collective the learners don't expect would deadlock their training step.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol, Sequence

import ray
import torch
from ray import ObjectRef
from torch import Tensor, nn


class WeightTransport(Protocol):
    """Where published weights live between the learner and the rollout workers.

    `publish(version, weights)`: weights is a state dict {name: Tensor} or an ObjectRef to one;
    version is the policy version, strictly above the last published one.
    `latest()`: (version, ObjectRef to the state dict) last published.
    """

    def publish(self, version: int, weights: dict[str, Tensor] | ObjectRef) -> None: ...

    def latest(self) -> tuple[int, ObjectRef]: ...


class ObjectStoreTransport:
    """Weights kept once in the Ray object store; readers `ray.get` the ref (zero-copy per node).

    A state dict is put with one `ray.put`; an ObjectRef (e.g. the return of rank 0's
    `state_dict_for_sync`) is already in the store and is kept as is, with no copy. Holding the
    latest ref here keeps it alive; publishing the next version releases the previous one once
    no worker still holds it (Ray reference counting).
    """

    def __init__(self) -> None:
        self._version: int | None = None
        self._ref: ObjectRef | None = None

    def publish(self, version: int, weights: dict[str, Tensor] | ObjectRef) -> None:
        """Store `weights` as `version`. Raises ValueError when version doesn't go up."""
        if self._version is not None and version <= self._version:
            raise ValueError(
                f"ObjectStoreTransport.publish: version {version} is not above the last "
                f"published version {self._version}"
            )
        self._ref = weights if isinstance(weights, ObjectRef) else ray.put(weights)
        self._version = version

    def latest(self) -> tuple[int, ObjectRef]:
        """(version, ObjectRef to the state dict). Raises LookupError before the first publish."""
        if self._ref is None:
            raise LookupError("ObjectStoreTransport.latest: nothing has been published yet")
        return self._version, self._ref


class WeightSync:
    """Driver-side: take the learner group's weights, publish them, push them to rollout workers.

    transport: defaults to `ObjectStoreTransport()`. rollout_workers: Ray actor handles with a
    `load_weights(version: int, state_dict: dict[str, Tensor])` method (Ray resolves the ref to
    the dict before the call).
    """

    def __init__(
        self,
        rollout_workers: Sequence[Any] = (),
        transport: WeightTransport | None = None,
    ) -> None:
        self.rollout_workers = list(rollout_workers)
        self.transport = transport if transport is not None else ObjectStoreTransport()

    def publish(self, learner_group: Any, version: int, push: bool = True) -> dict[str, float]:
        """Publish `learner_group.weights()` as `version` and wait until every worker loaded it.

        learner_group: anything with `weights() -> ObjectRef | dict` (a `LearnerGroup`).
        push=False only publishes: workers busy generating (asynchronous mode) load the version
        when their next `generate` call names it, instead of the driver waiting for them.
        Returns {"sync/seconds": wall time of gather + publish (+ all loads), "sync/version"}.
        Raises ValueError (version not increasing) and whatever a worker's load raised
        (`ray.exceptions.RayTaskError` wrapping it, e.g. a key mismatch).
        """
        start = time.perf_counter()
        self.transport.publish(version, learner_group.weights())
        published_version, ref = self.transport.latest()
        if push:
            ray.get([w.load_weights.remote(published_version, ref) for w in self.rollout_workers])
        return {"sync/seconds": time.perf_counter() - start, "sync/version": float(version)}


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy `state_dict` into `model` in place, after checking every key and shape.

    Values are cast to the model's dtype and device by `load_state_dict`'s copy.
    Raises ValueError listing the missing keys, unexpected keys and shape mismatches
    (first 5 of each), instead of torch's error from deep inside `load_state_dict`.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: model {tuple(expected[k].shape)} vs given {tuple(state_dict[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if expected[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"load_state_dict_strict into {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:5]}"
        )
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)


def state_dict_hash(state_dict: dict[str, Tensor]) -> str:
    """SHA-256 hex digest of names, dtypes, shapes and raw bytes, in sorted key order.

    Equal digests mean bit-identical weights; used to check that a worker holds what the
    learner published.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
