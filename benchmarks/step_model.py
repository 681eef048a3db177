"""The scale model of one synchronous RL step: phase seconds from per-component rates and a layout.

Pure functions, no Ray (used by ``benchmarks/scale_model.py``, tested by
``tests/benchmarks/test_scale_model.py``). A synchronous step (``rl.asynchronous=false``, the
controller's ``train_loop``) runs its phases one after another, so its time is their sum. For
``N`` samples, ``W`` rollout workers, ``R`` learner ranks and ``S`` reward replicas:

==========  ==========================  ====================  =====================================
phase       items per process           processes at once     what it is
==========  ==========================  ====================  =====================================
generate    ``ceil(N / W)``             ``W``                 decode images, encode, sample
score       ``N / S``                   ``S``                 the Serve reward call
dispatch    ``N``                       1 (the driver)        rest of the rollout wait: Ray calls,
                                                              results through the object store
experience  ``ceil(N / R)``             ``R``                 old log-probs, advantages
update      ``ceil(N / R)``             ``R``                 the PPO pass, plus ZeRO communication
sync        0                           ``W``                 gather, publish, load the weights
==========  ==========================  ====================  =====================================

Each phase is ``(fixed_s + per_item_s * items) * contention``: CPU work of its processes, both
parts measured per uncontended core, and ``contention = max(1, ceil(processes / nodes) /
cores_per_node)`` the CPU they share (the actors spread evenly over the nodes). On top:
``update`` pays, when ``R > 1``, ``collectives`` calls of ``allreduce_latency_s`` plus the ring
all-reduce volume ``2 (R - 1) / R * grad_bytes`` at ``allreduce_s_per_byte``; ``sync`` pays, when
rollout workers sit on more than one node, ``weight_bytes`` copied to the others (in parallel)
at ``remote_s_per_byte``; and on more than one node every phase pays one Ray call across nodes,
``remote_call_s`` more than a call on its own node (the prompts, the Serve call, the rollout
parts, the batch shards, the update's results and the weights each cross once).

On a 2-core machine every process shares the same 2 cores, so two Ray nodes started there on
loopback addresses are modelled as 2 nodes of ``cores / 2`` cores each, and ``cores`` is what
other users leave free (the machine's cores minus their measured load).

Follows the additive phase model of the synchronous actor-learner loop (OpenRLHF, veRL: rollout,
make-experience, train, broadcast in turn), each phase an Amdahl-style fixed part plus a part
split over the processes, and processor sharing for contention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PHASES = ("generate", "score", "dispatch", "experience", "update", "sync")


@dataclass(frozen=True)
class PhaseRate:
    """One phase's CPU work per process on one uncontended core: ``fixed_s`` seconds per step
    plus ``per_item_s`` seconds per item (sample, or scored item)."""

    fixed_s: float
    per_item_s: float


@dataclass(frozen=True)
class Rates:
    """Per-component rates measured on one node (see :func:`fit_phase`), in seconds.

    ``phases``: a :class:`PhaseRate` for each of ``PHASES`` (``generate``: per sample per rollout
    worker thread; ``score``: per item per reward replica; ``dispatch``: per sample of the
    driver's wait beyond generate + score; ``experience`` and ``update``: per sample per learner
    rank, compute only; ``sync``: fixed). ``allreduce_latency_s`` and ``allreduce_s_per_byte``: a
    gloo all-reduce between two processes (``t = latency + bytes * s_per_byte``); ``collectives``:
    all-reduce-sized calls per ZeRO update; ``grad_bytes`` and ``weight_bytes``: trainable gradient
    and published weight sizes; ``remote_s_per_byte``: copying weights to another node;
    ``remote_call_s``: what a Ray call to an actor on another node costs beyond one on its own.
    """

    phases: dict[str, PhaseRate]
    allreduce_latency_s: float
    allreduce_s_per_byte: float
    collectives: int
    grad_bytes: float
    weight_bytes: float
    remote_s_per_byte: float
    remote_call_s: float = 0.0

    def __post_init__(self) -> None:
        if set(self.phases) != set(PHASES):
            raise ValueError(f"Rates.phases: expected {list(PHASES)}, got {sorted(self.phases)}")


@dataclass(frozen=True)
class Layout:
    """Where the step runs: ``workers`` rollout workers, ``ranks`` learner ranks, ``replicas``
    reward replicas, spread evenly over ``nodes`` nodes of ``cores_per_node`` free cores each.

    Raises ValueError when a count is below 1 or ``cores_per_node`` is not positive."""

    workers: int
    ranks: int
    replicas: int
    nodes: int
    cores_per_node: float

    def __post_init__(self) -> None:
        for name in ("workers", "ranks", "replicas", "nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Layout.{name} must be >= 1, got {getattr(self, name)}")
        if not self.cores_per_node > 0:
            raise ValueError(f"Layout.cores_per_node must be > 0, got {self.cores_per_node}")


def contention(active: int, layout: Layout) -> float:
    """How much slower a phase's processes run than on a core each: ``max(1, ceil(active /
    nodes) / cores_per_node)`` (``active`` processes of the phase, spread evenly over the nodes)."""
    return max(1.0, math.ceil(active / layout.nodes) / layout.cores_per_node)


def work(layout: Layout, samples: int) -> dict[str, tuple[float, int]]:
    """``{phase: (items per process, processes at once)}`` of one step of ``samples`` (the table above)."""
    per_rank = math.ceil(samples / layout.ranks)
    return {"generate": (math.ceil(samples / layout.workers), layout.workers),
            "score": (samples / layout.replicas, layout.replicas), "dispatch": (samples, 1),
            "experience": (per_rank, layout.ranks), "update": (per_rank, layout.ranks), "sync": (0, layout.workers)}


def predict(rates: Rates, layout: Layout, samples: int) -> dict[str, float]:
    """Predicted seconds of each phase (``PHASES``) of one synchronous step of ``samples``
    completions, and their sum ``step``. Raises ValueError for ``samples < 1``."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    r = layout.ranks
    out = {}
    for phase, (items, active) in work(layout, samples).items():
        rate = rates.phases[phase]
        out[phase] = (rate.fixed_s + rate.per_item_s * items) * contention(active, layout)
    if r > 1:
        out["update"] += (rates.collectives * rates.allreduce_latency_s
                          + 2 * (r - 1) / r * rates.grad_bytes * rates.allreduce_s_per_byte)
    if min(layout.workers, layout.nodes) > 1:
        out["sync"] += rates.weight_bytes * rates.remote_s_per_byte
    if layout.nodes > 1:
        out = {phase: seconds + rates.remote_call_s for phase, seconds in out.items()}
    return out | {"step": sum(out[p] for p in PHASES)}


def fit_phase(items: list[float], seconds: list[float], slowdowns: list[float]) -> PhaseRate:
    """A phase's :class:`PhaseRate` from steps measured on one process: step ``i`` took
    ``seconds[i]`` for ``items[i]`` items under ``slowdowns[i]`` (:func:`contention`, >= 1).
    Least-squares line through ``(items, seconds / slowdown)``; with a single distinct item
    count, the mean as ``fixed_s`` and ``per_item_s = 0``.

    Raises ValueError for empty or unequal lists or a slowdown below 1."""
    if not items or not len(items) == len(seconds) == len(slowdowns):
        raise ValueError(f"fit_phase: need equal non-empty lists, got {len(items)}, {len(seconds)}, {len(slowdowns)}")
    if min(slowdowns) < 1:
        raise ValueError(f"fit_phase: slowdowns must be >= 1, got {min(slowdowns)}")
    y = [s / k for s, k in zip(seconds, slowdowns)]
    mx, my = sum(items) / len(items), sum(y) / len(y)
    sxx = sum((x - mx) ** 2 for x in items)
    if sxx == 0:
        return PhaseRate(fixed_s=my, per_item_s=0.0)
    slope = sum((x - mx) * (v - my) for x, v in zip(items, y)) / sxx
    return PhaseRate(fixed_s=my - slope * mx, per_item_s=slope)
