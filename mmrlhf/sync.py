"""Weight sync: the learner publishes `(version, weights)`, rollout workers load them.

After each update, rank 0 of the learner group gathers the full weights (ZeRO-3 included, see
`learner/engine.py`) and a transport makes them reachable by every rollout worker under a policy
version that only goes up. The driver-side `WeightSync` times the whole hop (`sync/seconds`).

Transports (one small interface, `WeightTransport`):
- `ObjectStoreTransport` (built, the default): the state dict lives once in the Ray object store
  (Ray docs, "Objects"); each rollout worker reads it from its node's shared-memory store.
  It travels as a `SharedStateDict`: each tensor's bytes as a numpy uint8 array, which Ray
  serialises out of band (pickle protocol 5) and a reader maps zero-copy from shared memory
  (Ray docs, "Serialization: numpy arrays"), where torch's own pickling would copy every tensor
  through `torch.save` bytes on both sides. Publishing then costs one copy into the store, and a
  CPU rollout worker binds its parameters to the mapped arrays (`bind_state_dict`), so loading
  copies nothing; the bytes from 1 MB to 500 MB are timed by `benchmarks/weight_sync.py`.
- Weight slots (built, used when every rollout worker runs on learner rank 0's machine): that
  copy into the store maps fresh pages on every publish (a page fault per 4 KiB), so rank 0 copies
  the weights into one of two shared-memory files it mapped once instead, and the object store
  carries a few hundred bytes naming the slot (`mmrlhf.weight_slots`); loading binds as above.
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
from collections.abc import Mapping
from typing import Any, Protocol, Sequence

import numpy as np
import ray
import torch
from ray import ObjectRef
from torch import Tensor, nn

from mmrlhf.types import ReadOnlyStateDict, tensor_bytes, tensor_from_bytes
from mmrlhf.weight_slots import SlotWeights, WeightSlots


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
    the dict before the call). slots: None, or a name unique to this run under which learner rank 0
    copies each version into its two shared-memory weight slots (`mmrlhf.weight_slots`), for
    rollout workers on rank 0's machine only (`weight_slots.same_machine`); whoever named them
    deletes them (`weight_slots.remove_slots`).
    """

    def __init__(
        self,
        rollout_workers: Sequence[Any] = (),
        transport: WeightTransport | None = None,
        slots: str | None = None,
    ) -> None:
        self.rollout_workers = list(rollout_workers)
        self.transport = transport if transport is not None else ObjectStoreTransport()
        self.slots = slots

    def publish(self, learner_group: Any, version: int, push: bool = True) -> dict[str, float]:
        """Publish `learner_group.weights()` as `version` and wait until every worker loaded it.

        learner_group: anything with `weights(**kwargs) -> ObjectRef | dict` (a `LearnerGroup`);
        given `slots=` when this sync has slots.
        push=False only publishes: workers busy generating (asynchronous mode) load the version
        when their next `generate` call names it, instead of the driver waiting for them.
        Returns {"sync/seconds": wall time of gather + publish (+ all loads), "sync/version"}.
        Raises ValueError (version not increasing) and whatever a worker's load raised
        (`ray.exceptions.RayTaskError` wrapping it, e.g. a key mismatch).
        """
        start = time.perf_counter()
        weights = learner_group.weights() if self.slots is None else learner_group.weights(slots=self.slots)
        self.transport.publish(version, weights)
        published_version, ref = self.transport.latest()
        if push:
            ray.get([w.load_weights.remote(published_version, ref) for w in self.rollout_workers])
        return {"sync/seconds": time.perf_counter() - start, "sync/version": float(version)}


class WeightPublisher:
    """The publishing side of weight sync (learner rank 0): weights in the form that crosses to the
    rollout workers. Owns the weight slots it writes (`mmrlhf.weight_slots`); `close` deletes them."""

    def __init__(self) -> None:
        self._slots: WeightSlots | None = None

    def shareable(self, weights: Mapping[str, Tensor], slots: str | None = None) -> "SharedStateDict | SlotWeights":
        """`weights` copied into the free one of the weight slots named `slots` (a `SlotWeights`),
        or wrapped for the object store (a `SharedStateDict`, no copy) when `slots` is None or a
        reader still holds that slot. Raises ValueError as `WeightSlots.write`."""
        if slots is not None:
            if self._slots is None or self._slots.prefix != slots:
                self.close()
                self._slots = WeightSlots(slots)
            written = self._slots.write(weights)
            if written is not None:
                return written
        return SharedStateDict.from_state_dict(weights)

    def close(self) -> None:
        """Delete this publisher's weight slots, if any."""
        if self._slots is not None:
            self._slots.close()
            self._slots = None


class SharedStateDict(ReadOnlyStateDict):
    """A read-only state dict {name: Tensor} that crosses the Ray object store without copies.

    Each tensor is kept as its raw bytes, a 1-D numpy uint8 array (with its torch dtype and
    shape), because Ray serialises numpy arrays out of band (pickle protocol 5): `ray.put` copies
    the bytes once into shared memory and `ray.get` maps them back without a copy (Ray docs,
    "Serialization"), which torch tensors' own pickling (through `torch.save` bytes) does not.
    Tensors that share storage (tied weights) are stored once. The values are views: built from a
    state dict they alias its tensors, read from the object store they alias shared memory, which
    is read-only by contract (other readers map the same bytes); clone a value to change it.
    Built with `from_state_dict`; the constructor is for unpickling.
    """

    def __init__(self, entries: dict[str, tuple[str, tuple[int, ...], np.ndarray]]) -> None:
        self._entries = entries  # name -> (torch dtype name, shape, uint8 bytes (nbytes,)): tensor_bytes
        self._tensors = {name: tensor_from_bytes(*entry) for name, entry in entries.items()}  # read-only views

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "SharedStateDict":
        """Wrap `state_dict`'s tensors (moved to the CPU and made contiguous only where they aren't).

        CPU contiguous tensors are not copied: the result aliases them until it is serialised.
        """
        entries: dict[tuple, tuple] = {}  # one entry per distinct storage view, so pickle stores tied weights once
        by_name = {}
        for name, tensor in state_dict.items():
            tensor = tensor.detach().cpu().contiguous()
            key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
            if key not in entries:
                entries[key] = tensor_bytes(tensor)
            by_name[name] = entries[key]
        return cls(by_name)

    def __reduce__(self):
        return SharedStateDict, (self._entries,)

    @property
    def nbytes(self) -> int:
        """Bytes held, each shared storage counted once."""
        return sum(raw.nbytes for raw in {id(raw): raw for _, _, raw in self._entries.values()}.values())


def _check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], caller: str) -> dict[str, Tensor]:
    """`model.state_dict()`, after checking `state_dict` has exactly its keys and shapes.

    Raises ValueError listing the missing keys, unexpected keys and shape mismatches (first 5 of each).
    """
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: model {tuple(expected[k].shape)} vs given {tuple(state_dict[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if expected[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{caller} into {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:5]}"
        )
    return expected


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy `state_dict` into `model` in place, after checking every key and shape.

    Values are cast to the model's dtype and device by `load_state_dict`'s copy.
    Raises ValueError listing the missing keys, unexpected keys and shape mismatches
    (first 5 of each), instead of torch's error from deep inside `load_state_dict`.
    """
    _check_state_dict(model, state_dict, "load_state_dict_strict")
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)


def bind_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Make `model`'s parameters and buffers the tensors of `state_dict` (no copy) where they can be.

    For an inference-only replica: a value with the model's dtype and device becomes the
    parameter's `.data` (or the buffer) itself, so a `SharedStateDict` read from the object store
    is used where it lies in shared memory, read-only, and the model must not write its weights
    (no optimiser, no in-place updates); any other value is copied in, cast as in
    `load_state_dict_strict`. Keys and shapes are checked first, nothing is changed on error.
    Raises ValueError as `load_state_dict_strict`.
    """
    expected = _check_state_dict(model, state_dict, "bind_state_dict")
    with torch.no_grad():
        for name, current in expected.items():
            value = state_dict[name]
            if value.dtype != current.dtype or value.device != current.device:
                current.copy_(value)
                continue
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if attr in module._parameters:
                module._parameters[attr].data = value
            else:
                module._buffers[attr] = value


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
