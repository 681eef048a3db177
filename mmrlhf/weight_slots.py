"""Weight slots: published weights copied into shared memory that the readers on the machine map once.

Why: a `ray.put` of the weights lands on object-store pages that the writing process has not
mapped yet, so a 100 MB publish costs 25,600 minor page faults (one per 4 KiB page) and took
36-60 ms here against 6 ms for a memcpy of the same bytes (`benchmarks/weight_sync.py`). Two
files in `/dev/shm` (tmpfs) per writer, written in turn, are mapped once by the writer and once by
each reader on the same machine: from the third publish on, the copy into a slot runs at memcpy
speed, and a reader binds its parameters to the mapped bytes (`sync.bind_state_dict`) with no copy.

Protocol, with POSIX advisory locks (`fcntl.flock`) on each slot file:
- the writer copies a state dict into the slot that does not hold its latest write, and only if it
  gets that slot's lock exclusively without waiting (`LOCK_EX | LOCK_NB`). A slot a reader still
  holds is never overwritten: `WeightSlots.write` returns None, and the caller publishes through
  the object store instead. The slot's header gets the write's sequence number last.
- a reader (a `SlotWeights` unpickled into a `SlotStateDict`) takes the slot's lock shared, checks
  the sequence number and keeps the lock (its lease) while any tensor of that read is alive: a
  rollout worker's parameters bound to them hold it until the worker binds the next weights. The
  kernel drops the lock when a process dies.
So the writer alternates between the slots while every reader moves to each new version before
the next one is written, the synchronous loop's order (`WeightSync.publish` waits for every load);
otherwise a write falls back to the object store, and nothing a reader maps changes under it.

Slots are files of one machine: every reader must run where the writer runs (`same_machine`);
`WeightSync` uses them only then. The files are removed by `WeightSlots.close` and, since an
actor killed by Ray runs no clean-up, by `remove_slots` from the process that named them.
"""

from __future__ import annotations

import fcntl
import functools
import mmap
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
from torch import Tensor

from mmrlhf.types import ReadOnlyStateDict, tensor_bytes, tensor_from_bytes

SHM_DIR = Path("/dev/shm")
HEADER_BYTES = 64  # int64 sequence number of the write the slot holds, then padding to a cache line
ALIGN = 64  # bytes: each tensor starts on a cache line

# name -> (torch dtype name, shape, byte offset in the slot file, nbytes)
Layout = dict[str, tuple[str, tuple[int, ...], int, int]]


@functools.cache
def machine_id() -> str:
    """This machine's boot id (Linux `/proc/sys/kernel/random/boot_id`): processes that report
    the same id share `/dev/shm`, Ray nodes started on loopback addresses of one machine included."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def same_machine(actors: Sequence[Any]) -> bool:
    """Whether the Ray actors (handles) all run on this one machine and it has `/dev/shm`.

    Asks each actor for its `machine_id` (`__ray_call__`, Ray docs "Actors"): one small call each.
    """
    if not SHM_DIR.is_dir() or not actors:
        return False
    ids = ray.get([actor.__ray_call__.remote(lambda _self: machine_id()) for actor in actors])
    return len(set(ids)) == 1


def remove_slots(prefix: str) -> None:
    """Delete the slot files named `prefix` (see `WeightSlots`); readers that mapped them keep their
    mappings until they exit. Missing files are fine."""
    for path in SHM_DIR.glob(f"{prefix}-slot*"):
        path.unlink(missing_ok=True)


def _layout(state_dict: Mapping[str, Tensor]) -> tuple[Layout, list[tuple[int, np.ndarray]], int]:
    """(layout, [(offset, bytes to copy)], file size in bytes). Tensors that share storage (tied
    weights) are stored once, as `sync.SharedStateDict` does."""
    layout: Layout = {}
    copies: list[tuple[int, np.ndarray]] = []
    offsets: dict[tuple, int] = {}
    end = HEADER_BYTES
    for name, tensor in state_dict.items():
        dtype, shape, raw = tensor_bytes(tensor)
        key = (raw.ctypes.data, dtype, shape)
        if key not in offsets:
            offsets[key] = end
            copies.append((end, raw))
            end += -(-raw.nbytes // ALIGN) * ALIGN
        layout[name] = (dtype, shape, offsets[key], raw.nbytes)
    return layout, copies, end


class WeightSlots:
    """The writer's two slots, `/dev/shm/<prefix>-slot0` and `-slot1`, created at the first write.

    prefix: unique per run (the caller removes the files with `remove_slots(prefix)` too).
    Every write must have the first write's keys, dtypes and shapes (a model's weights do).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.paths = [SHM_DIR / f"{prefix}-slot{i}" for i in range(2)]
        self._layout: Layout | None = None
        self._slots: list[tuple[int, mmap.mmap]] = []  # (fd, writable mapping) per slot
        self._sequence = 0
        self._latest: int | None = None  # slot index of the latest write

    def write(self, state_dict: Mapping[str, Tensor]) -> "SlotWeights | None":
        """Copy `state_dict` into the free slot; a `SlotWeights` to pass to readers, or None when a
        reader still holds that slot (publish through the object store then).

        Raises ValueError when the keys, dtypes or shapes differ from the first write's;
        FileExistsError when another writer made files under this prefix.
        """
        layout, copies, size = _layout(state_dict)
        if self._layout is None:
            self._slots = [self._create(path, size) for path in self.paths]
            self._layout = layout
        elif layout != self._layout:
            changed = sorted(set(layout) ^ set(self._layout)) or [
                k for k in layout if layout[k][:2] != self._layout[k][:2]]
            raise ValueError(f"WeightSlots.write: the weights differ from the first write's layout "
                             f"(keys, dtypes or shapes), e.g. {changed[:5]}")
        slot = 0 if self._latest is None else 1 - self._latest
        fd, buffer = self._slots[slot]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            for offset, raw in copies:
                np.copyto(np.frombuffer(buffer, np.uint8, raw.nbytes, offset), raw)
            self._sequence += 1
            np.frombuffer(buffer, np.int64, 1, 0)[0] = self._sequence
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._latest = slot
        return SlotWeights(str(self.paths[slot]), self._sequence, machine_id(), layout)

    @staticmethod
    def _create(path: Path, size: int) -> tuple[int, mmap.mmap]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size)

    def close(self) -> None:
        """Unmap and delete the slot files (readers keep their mappings)."""
        for fd, buffer in self._slots:
            buffer.close()
            os.close(fd)
        self._slots, self._layout, self._latest = [], None, None
        remove_slots(self.prefix)


class SlotWeights:
    """What the writer returns for one write: the slot's path, the write's sequence number, the
    writer's machine and the layout; a few hundred bytes. Unpickled, it becomes the reader's
    `SlotStateDict` (so a Ray actor method can take it where it takes a state dict)."""

    def __init__(self, path: str, sequence: int, machine: str, layout: Layout) -> None:
        self.path, self.sequence, self.machine, self.layout = path, sequence, machine, layout

    def __reduce__(self):
        return SlotStateDict, (self.path, self.sequence, self.machine, self.layout)


# path -> (fd, read-only mapping) of every slot this process has read; a reader maps each slot once
_MAPPED: dict[str, tuple[int, mmap.mmap]] = {}
# path -> how many reads of it this process still uses; the slot's shared lock is held while > 0
_LEASES: dict[str, int] = {}


def _mapped(path: str) -> tuple[int, mmap.mmap]:
    if path not in _MAPPED:
        fd = os.open(path, os.O_RDONLY)
        _MAPPED[path] = fd, mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
    return _MAPPED[path]


def _release(path: str) -> None:
    _LEASES[path] -= 1
    if _LEASES[path] == 0:
        fcntl.flock(_MAPPED[path][0], fcntl.LOCK_UN)


class SlotStateDict(ReadOnlyStateDict):
    """A read-only state dict {name: Tensor} whose tensors are views of a slot mapped in this process.

    Made by unpickling a `SlotWeights`: maps the slot (once per process), takes its lock shared and
    checks that it still holds the write named. The lock is this read's lease: it is held until
    every tensor of the read is gone (a rollout worker's parameters bound to them included), so the
    writer cannot overwrite bytes in use. Values must not be written: the mapping is read-only, and
    torch does not know it, so a write crashes the process (SIGSEGV).

    Raises ValueError when read on another machine than the writer's; FileNotFoundError when the
    slot was removed; RuntimeError when the slot was overwritten before this process locked it.
    """

    def __init__(self, path: str, sequence: int, machine: str, layout: Layout) -> None:
        if machine != machine_id():
            raise ValueError(f"SlotStateDict: {path} was written on machine {machine} and is read on "
                             f"{machine_id()}; weight slots only reach readers on the writer's machine")
        try:
            fd, buffer = _mapped(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"SlotStateDict: weight slot {path} does not exist (removed when the "
                                    "weight sync closed?)") from err
        if _LEASES.get(path, 0) == 0:
            fcntl.flock(fd, fcntl.LOCK_SH)
        _LEASES[path] = _LEASES.get(path, 0) + 1
        whole = np.frombuffer(buffer, np.uint8)  # every tensor below is a view of it (numpy keeps it as their base)
        weakref.finalize(whole, _release, path)
        held = int(whole[:8].view(np.int64)[0])
        if held != sequence:
            raise RuntimeError(f"SlotStateDict: {path} holds write {held}, not write {sequence}: the writer "
                               "overwrote it before this reader locked it")
        self.path, self.sequence = path, sequence
        self._tensors = {name: tensor_from_bytes(dtype, shape, whole[offset:offset + nbytes])
                         for name, (dtype, shape, offset, nbytes) in layout.items()}
