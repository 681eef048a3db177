"""Weight sync: seconds to publish weights and load them in a worker, through weight slots and the object store, beside a memcpy.

The real path of `mmrlhf.sync`: `WeightSync.publish(source, version)` takes `source.weights()`
(an ObjectRef to what an actor returned, as learner rank 0 returns its `state_dict_for_sync`
through a `WeightPublisher`), keeps it in `ObjectStoreTransport` and waits until a worker actor
has run `load_weights(version, state_dict)`, which calls `bind_state_dict` as `RolloutWorker`
does. Two transports, alternating in the same rounds: weight slots (`mmrlhf.weight_slots`, what
`mmrlhf rl` uses when every actor runs on one machine: rank 0 copies the weights into one of two
shared-memory files it mapped once, and a few hundred bytes cross the object store) and the
object store alone (a `SharedStateDict`, one `ray.put` copy, as across machines). The weights are
`--tensors` float32 tensors of equal size, 1 MB to 500 MB in all. Beside each size, in the same
rounds: a memcpy of as many bytes between two preallocated numpy arrays in the driver
(`numpy.copyto`). Bandwidths are fitted over all sizes (seconds = a + bytes / bandwidth, least
squares); the gate (issue 14) is sync >= 0.5x memcpy bandwidth at 100 MB and above.

Two more rows: the full hop from a real 2-rank DeepSpeed ZeRO-3 learner group (gloo, every
parameter partitioned): rank 0 gathers each parameter (`GatheredParameters`), publishes, and
the worker loads, at `--zero3-mb` MB, with each transport.

    python benchmarks/weight_sync.py [--sizes-mb 1 10 50 100 200 500] [--rounds 5] [--json out.json]
    python benchmarks/weight_sync.py --quick      # < 1 minute smoke run (1 and 4 MB, ZeRO-3 at 4 MB)
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
import ray
import torch
from torch import nn

import common
from rundir import local_ray

GATE, GATE_FROM_MB = 0.5, 100
MB = 2**20
# Rounds discarded first: each transport's first two publishes touch fresh memory (the two slots;
# the store's memory for the two live versions), which ran at 0.2-0.8 GB/s on this VM (10-20 GB/s
# once touched). A run publishes every step, so what follows them is its steady state.
WARMUP = 2
TRANSPORTS = ("slots", "object store")


def make_weights(nbytes: int, tensors: int) -> nn.Module:
    """A module of `tensors` float32 parameters holding `nbytes` bytes in all (rounded down to whole floats)."""
    per = max(1, nbytes // 4 // tensors)
    return nn.ParameterList([nn.Parameter(torch.randn(per)) for _ in range(tensors)])


class Publisher:
    """Stands in for learner rank 0 without ZeRO partitioning: returns its weights as rank 0 does."""

    def __init__(self, nbytes: int, tensors: int) -> None:
        from mmrlhf.sync import WeightPublisher

        self.model = make_weights(nbytes, tensors)
        self.publisher = WeightPublisher()

    def state_dict_for_sync(self, slots: str | None = None):
        return self.publisher.shareable(self.model.state_dict(), slots)


class Source:
    """`WeightSync`'s view of a learner group: `weights(**kwargs)` -> ObjectRef once the actor has
    returned it (as `LearnerGroup.weights`); records the seconds that took in `last_seconds`."""

    def __init__(self, publisher) -> None:
        self.publisher, self.last_seconds = publisher, 0.0

    def weights(self, **kwargs):
        start = time.perf_counter()
        ref = self.publisher.state_dict_for_sync.remote(**kwargs)
        ray.wait([ref], fetch_local=False)
        self.last_seconds = time.perf_counter() - start
        return ref


class Replica:
    """A rollout worker's weight-loading side: `load_weights` as `RolloutWorker.load_weights`."""

    def __init__(self, nbytes: int, tensors: int) -> None:
        torch.manual_seed(1)
        self.model = make_weights(nbytes, tensors)

    def load_weights(self, version: int, state_dict) -> int:
        from mmrlhf.sync import bind_state_dict

        bind_state_dict(self.model, state_dict)
        return version

    def weights_hash(self) -> str:
        from mmrlhf.sync import state_dict_hash

        return state_dict_hash(self.model.state_dict())


def fit_bandwidth(nbytes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(fixed seconds a, bytes/s) of the least-squares line seconds = a + bytes / bandwidth."""
    slope, intercept = np.polyfit(np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float), 1)
    return float(intercept), float(1.0 / slope)


def timed_sync(sync, source, split: dict[str, list[float]] | None = None):
    """A run for `common.alternating`: one `sync.publish(source, next version)`, its seconds; with
    `split`, also the publish part (`source.last_seconds`) appended under "publish"."""
    version = [0]

    def run() -> float:
        version[0] += 1
        seconds = sync.publish(source, version[0])["sync/seconds"]
        if split is not None:
            split.setdefault("publish", []).append(source.last_seconds)
        return seconds
    return run


def timed_memcpy(nbytes: int):
    src, dst = np.random.randint(0, 255, nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)

    def run() -> float:
        start = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - start
    return run


def zero3_factory(nbytes: int, tensors: int):
    def build() -> nn.Module:
        return make_weights(nbytes, tensors)
    return build


def new_syncs(replica) -> dict[str, object]:
    """{transport: a WeightSync to `replica`}: through weight slots of a fresh name, and the object store alone."""
    from mmrlhf.sync import WeightSync

    return {"slots": WeightSync([replica], slots=f"mmrlhf-bench-{uuid.uuid4().hex[:8]}"),
            "object store": WeightSync([replica])}


def zero3_rows(mb: float, tensors: int, rounds: int) -> tuple[dict[str, float], int]:
    """({transport: median seconds of gather + publish + load from a 2-rank ZeRO-3 group}, bytes)."""
    from mmrlhf.learner import LearnerGroup, deepspeed_config
    from mmrlhf.weight_slots import remove_slots

    cfg = deepspeed_config(3, micro_batch_size=1, grad_accum=1, lr=1e-3, weight_decay=0.0, grad_clip=0.0)
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter
    nbytes = int(mb * MB)
    replica = ray.remote(num_cpus=0)(Replica).remote(nbytes, tensors)
    syncs = new_syncs(replica)
    with LearnerGroup(2, zero3_factory(nbytes, tensors), cfg, cpus_per_rank=1) as group:
        values = common.alternating({name: timed_sync(sync, group) for name, sync in syncs.items()}, rounds,
                                    warmup=WARMUP)
        if ray.get(replica.weights_hash.remote()) != group.param_hash():
            raise RuntimeError("weight_sync: the replica's weights differ from the ZeRO-3 group's")
    remove_slots(syncs["slots"].slots)
    ray.kill(replica)
    return {name: statistics.median(v) for name, v in values.items()}, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 50, 100, 200, 500])
    parser.add_argument("--tensors", type=int, default=64, help="tensors per state dict")
    parser.add_argument("--zero3-mb", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 and 4 MB, ZeRO-3 at 4 MB, 3 rounds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.sizes_mb, args.zero3_mb, args.rounds = [1, 4], 4, 3

    from mmrlhf.weight_slots import remove_slots

    runs, splits, sizes, syncs = {}, {}, {mb: int(mb * MB) for mb in args.sizes_mb}, []
    with local_ray(num_cpus=2):
        actors = []
        for mb, nbytes in sizes.items():
            publisher = ray.remote(num_cpus=0)(Publisher).remote(nbytes, args.tensors)
            replica = ray.remote(num_cpus=0)(Replica).remote(nbytes, args.tensors)
            actors += [publisher, replica]
            for name, sync in new_syncs(replica).items():
                splits[name, mb] = {}
                runs[f"{name} {mb:g}"] = timed_sync(sync, Source(publisher), splits[name, mb])
                syncs.append(sync)
            runs[f"memcpy {mb:g}"] = timed_memcpy(nbytes)
        try:
            values = common.alternating(runs, args.rounds, warmup=WARMUP)
            hashes = ray.get([a.weights_hash.remote() for a in actors[1::2]])
        finally:
            for actor in actors:
                ray.kill(actor)
            for sync in syncs:
                if sync.slots is not None:
                    remove_slots(sync.slots)
        zero3_s, zero3_bytes = zero3_rows(args.zero3_mb, args.tensors, args.rounds)
    if len(set(hashes)) != len(hashes):
        raise RuntimeError("weight_sync: replicas of different sizes hold equal weights; the sync did not happen")

    sync_s = {(name, mb): statistics.median(values[f"{name} {mb:g}"]) for name in TRANSPORTS for mb in sizes}
    copy_s = {mb: statistics.median(values[f"memcpy {mb:g}"]) for mb in sizes}
    publish_s = {key: statistics.median(split["publish"][-args.rounds:]) for key, split in splits.items()}
    rows = []
    for mb, nbytes in sizes.items():
        for name in TRANSPORTS:
            seconds = sync_s[name, mb]
            rows.append([f"{mb:g} MB", name, seconds, publish_s[name, mb], seconds - publish_s[name, mb],
                         nbytes / seconds / 1e9, nbytes / copy_s[mb] / 1e9, copy_s[mb] / seconds])
    _, copy_bandwidth = fit_bandwidth(list(sizes.values()), list(copy_s.values()))
    for name in TRANSPORTS:
        fixed, bandwidth = fit_bandwidth(list(sizes.values()), [sync_s[name, mb] for mb in sizes])
        rows.append(["fit (all sizes)", name, f"{fixed:.3g} + bytes/bw", "", "", bandwidth / 1e9,
                     copy_bandwidth / 1e9, bandwidth / copy_bandwidth])
    zero3_copy = statistics.median(common.alternating({"memcpy": timed_memcpy(zero3_bytes)}, args.rounds,
                                                      warmup=WARMUP)["memcpy"])
    for name in TRANSPORTS:
        rows.append([f"ZeRO-3 2 ranks, gather + sync, {args.zero3_mb:g} MB", name, zero3_s[name], "", "",
                     zero3_bytes / zero3_s[name] / 1e9, zero3_bytes / zero3_copy / 1e9, zero3_copy / zero3_s[name]])
    verdicts = []
    for name in TRANSPORTS:
        gated = [copy_s[mb] / sync_s[name, mb] for mb in sizes if mb >= GATE_FROM_MB]
        verdicts.append(f"{name} {('met' if min(gated) >= GATE else 'missed') if gated else 'not measured'}"
                        + (f" (lowest {min(gated):.2f})" if gated else f" (no size >= {GATE_FROM_MB} MB)"))
    notes = [f"{args.tensors} float32 tensors per state dict; median of {args.rounds} alternating rounds after "
             f"{WARMUP} warm-up rounds (the slots and the store's memory for two live versions touched once). "
             "sync = WeightSync.publish: the publisher actor returns the weights through a WeightPublisher "
             "(slots: copied into a shared-memory slot it mapped once, a few hundred bytes to the object store; "
             "object store: a SharedStateDict, one copy into the store) and a worker actor binds its parameters "
             "to the mapped arrays (bind_state_dict, as RolloutWorker.load_weights); publish = until the ref is "
             "ready, load = the rest (the worker's call).",
             "memcpy = numpy.copyto between two preallocated arrays in the driver, the same bytes, the same rounds. "
             "ratio = memcpy seconds / sync seconds (= sync bandwidth / memcpy bandwidth); the ZeRO-3 rows' memcpy "
             "is timed at their size after the group is gone.",
             f"gate: sync >= {GATE}x memcpy bandwidth at {GATE_FROM_MB} MB and above: {'; '.join(verdicts)}."]
    common.report("Weight sync through weight slots and the Ray object store vs memcpy",
                  ["weights", "transport", "sync s", "publish s", "load s", "sync GB/s", "memcpy GB/s", "ratio"],
                  rows, notes, args.json)


if __name__ == "__main__":
    main()
