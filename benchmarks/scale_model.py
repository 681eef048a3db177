"""A scale model of the RL step, calibrated on one node and checked on two Ray nodes on loopback.

1. Calibrate: the RL stage (``mmrlhf_rl.py``, critic-free PPO as in ``ray_overhead.py``) with
   1 rollout worker, 1 learner rank and 1 reward replica on a local cluster, at ``N`` and
   ``N / 2`` samples per step; every step after the first, its phase seconds taken back to one
   uncontended core, gives a point, and a line through each phase's points its fixed seconds and
   seconds per item (:func:`step_model.fit_phase`). A gloo all-reduce between two processes at
   two sizes gives the ZeRO communication's latency and seconds per byte.
2. Check: two Ray nodes on ``127.0.0.1`` and ``127.0.0.2`` (``loopback.loopback_cluster``,
   token auth), each advertising one ``rollout`` and one ``learner`` resource, so the same loop
   with 2 rollout workers and 2 learner ranks puts one of each on each node; its measured step
   time against :func:`step_model.predict` for that layout.
3. Extrapolate: the same rates for clusters of N nodes of this machine's cores, one rollout
   worker and one learner rank per node.

The machine is shared: other users' CPU load is sampled from ``/proc`` during each run's steps
(``loopback.OthersLoad``) and the model is given the cores they leave free, in the calibration
(to turn measured seconds into seconds per uncontended core) and in the check. Each run (and the
throughput measurement) first waits until others keep fewer than ``--quiet-below`` cores busy,
and the script stops with an error when that takes over ``--quiet-wait`` seconds: starved of CPU
by other users' processes, every Ray call waits for a time slice and the fixed costs grow far
beyond the CPU share, which the model does not describe.

    python benchmarks/scale_model.py [--run-dir runs/digits] [--rounds 1] [--json out.json]
    python benchmarks/scale_model.py --quick       # tiny run built here, 3 small steps: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import common
import step_model
from loopback import OthersLoad, adopt_orphans, loopback_cluster, remote_call_seconds
from ray_overhead import PPO
from rundir import prepared_run
from step_model import Layout, Rates, contention, fit_phase, predict
from vs_trl import run_contender

GATE = 0.2  # |measured / predicted - 1| at most this (issue 14)
ADDRESSES = ["127.0.0.1", "127.0.0.2"]
ZERO_COLLECTIVES = 4  # ZeRO-2 per optimiser step: grads reduced, partitions gathered, grad norm, overflow flag
MEASURED = {"generate": "time/generate", "score": "time/score", "experience": "time/experience",
            "update": "time/update", "sync": "time/sync"}


def layout_args(workers: int, ranks: int, spread: bool) -> list[str]:
    """``--set`` overrides for ``workers`` rollout workers and ``ranks`` learner ranks (with
    ``spread``: each needs one ``rollout`` / ``learner`` resource, which each node has one of)."""
    extra = ["resources.rollout_resource=rollout", "resources.learner_resource=learner"] if spread else []
    return [f"rl.rollout_workers={workers}", f"rl.learner_ranks={ranks}", "rl.asynchronous=false",
            "reward.min_replicas=1", "reward.max_replicas=1", *extra]


def measured_run(args: argparse.Namespace, run_dir: Path, scratch: Path, load: OthersLoad, prompts: int,
                 layout: list[str]) -> list[dict[str, float]]:
    """One run of the RL stage; for each step after the first (which pays one-time costs) the
    seconds of each of ``step_model.PHASES`` (``dispatch``: the rollout wait beyond generate +
    score), of the whole ``step``, and ``others``: the cores other users kept busy meanwhile."""
    run_args = argparse.Namespace(**{**vars(args), "prompts": prompts})
    launched = time.time()
    result = run_contender(["mmrlhf_rl.py", *PPO, *layout], run_dir, run_args, scratch)
    start, steps = launched + result["startup_s"], []
    for index, step in enumerate(result["steps"]):
        end = start + step["time/step_seconds"]
        if index:
            steps.append({name: step[key] for name, key in MEASURED.items()}
                         | {"dispatch": step["time/rollout"] - step["time/generate"] - step["time/score"],
                            "step": step["time/step_seconds"], "others": load.cores(start, end)})
        start = end
    return steps


def _allreduce_rank(rank: int, port: int, sizes: list[int], repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for n in sizes:
        tensor, times = torch.ones(max(1, n // 4)), []
        for _ in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - start)
        if rank == 0:
            out[n] = statistics.median(times[1:])
    dist.destroy_process_group()


def allreduce_rate(nbytes: int, repeats: int = 20) -> tuple[float, float]:
    """``(latency_s, s_per_byte)`` of a gloo all-reduce between two processes on this machine:
    the line through its median seconds at 4 bytes and at ``nbytes`` (torch.distributed)."""
    import torch.multiprocessing as mp

    from loopback import _free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_allreduce_rank, args=(_free_port(), [4, nbytes], repeats, out), nprocs=2)
        small, large = out[4], out[nbytes]
    return small, max(0.0, (large - small) / (nbytes - 4))


PARALLEL_WORK = """
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(96, 96)
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    a = torch.tanh(a @ a)
print(time.perf_counter() - start)
"""


def parallel_cores(iterations: int = 20000) -> float:
    """How many single processes' worth of throughput two processes get on this machine at once:
    ``2 * t1 / t2`` for a one-thread torch loop (``t1`` alone, ``t2`` the slower of two started
    together; medians of 3 alternating rounds). 2.0 for two independent cores; less when the virtual CPUs share a physical core,
    its caches or memory bandwidth."""
    import subprocess
    import sys

    def timed(processes: int) -> float:
        go = time.time() + 4.0  # after every process has imported torch
        procs = [subprocess.Popen([sys.executable, "-c", PARALLEL_WORK, str(go), str(iterations)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        return max(float(proc.communicate(timeout=300)[0].split()[-1]) for proc in procs)

    times = common.alternating({"one": lambda: timed(1), "two": lambda: timed(2)}, rounds=3, warmup=0)
    return 2 * statistics.median(times["one"]) / statistics.median(times["two"])


def model_sizes(policy: str) -> tuple[int, int]:
    """``(grad_bytes, weight_bytes)``: the trainable parameters of the learner's policy (vision
    tower frozen) and the whole policy, as float32 bytes."""
    from mmrlhf.learner.rl_group import policy_model_factory

    model = policy_model_factory(policy, freeze_vision_tower=True)()
    return (sum(4 * p.numel() for p in model.parameters() if p.requires_grad),
            sum(4 * p.numel() for p in model.parameters()))


def calibrate(runs: list[list[dict[str, float]]], samples: list[int], machine_cores: tuple[int, float],
              comm: tuple[float, float], sizes: tuple[int, int], remote_call_s: float) -> Rates:
    """The rates from one-node runs of 1 worker, 1 rank and 1 replica (``runs[i]``'s steps at
    ``samples[i]`` samples): each step's phase seconds taken back to one uncontended core with
    the cores others left free during it (:func:`free_cores`), then a line through them per phase
    (``fit_phase``)."""
    items, seconds, slowdowns = [], {p: [] for p in step_model.PHASES}, []
    for steps, n in zip(runs, samples):
        for step in steps:
            items.append(float(n))
            slowdowns.append(contention(1, Layout(1, 1, 1, 1, free_cores(machine_cores, step["others"]))))
            for phase in step_model.PHASES:
                seconds[phase].append(step[phase])
    fits = {p: fit_phase([0.0] * len(items) if p == "sync" else items, seconds[p], slowdowns)
            for p in step_model.PHASES}
    return Rates(fits, allreduce_latency_s=comm[0], allreduce_s_per_byte=comm[1], collectives=ZERO_COLLECTIVES,
                 grad_bytes=sizes[0], weight_bytes=sizes[1], remote_s_per_byte=comm[1], remote_call_s=remote_call_s)


def free_cores(machine_cores: tuple[int, float], others: float) -> float:
    """The cores other users leave free, in single processes' worth: ``machine_cores`` is (the
    CPU count, :func:`parallel_cores`), scaled by the share others leave (at least a twentieth
    of a core: a process always gets some)."""
    cores, effective = machine_cores
    return max(effective * (cores - others) / cores, 0.05)


def mean(steps: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(step[key] for step in steps)


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """``os.environ`` replaced by ``env`` for the block (the contender inherits it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run directory with an SFT policy (default: build a tiny one)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--rounds", type=int, default=1, help="calibrate-and-check rounds (median of each figure)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step of the full-size runs (even)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="cluster sizes to extrapolate")
    parser.add_argument("--root", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--quiet-below", type=float, default=0.3,
                        help="before each run, wait until other users keep fewer cores than this busy (5 s mean)")
    parser.add_argument("--quiet-wait", type=float, default=600.0,
                        help="at most this many seconds per wait, then stop with an error")
    parser.add_argument("--quick", action="store_true", help="3 steps of 8 x 2 samples, 4 new tokens")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.prompts, args.samples, args.max_new_tokens = 3, 8, 2, 4
    if args.prompts < 2 or args.prompts % 2:
        parser.error(f"--prompts must be even and >= 2 (the calibration also runs half of it), got {args.prompts}")
    adopt_orphans()
    cores = os.cpu_count() or 1
    n_large, n_small = args.prompts * args.samples, args.prompts // 2 * args.samples
    one, two = layout_args(1, 1, spread=False), layout_args(2, 2, spread=True)
    rounds = []
    with tempfile.TemporaryDirectory(dir=args.root) as tmp, OthersLoad() as load:
        cfg = prepared_run(args.run_dir, Path(tmp) / "run", args.config)
        sft = str((Path(cfg.run_dir) / "sft" / "policy").resolve())
        sizes = model_sizes(sft)

        def quiet() -> None:
            if not load.wait_quiet(args.quiet_below, 5.0, args.quiet_wait):
                raise RuntimeError(f"other users kept {args.quiet_below} cores or more busy for {args.quiet_wait:.0f} s: "
                                   "not measuring on a machine this busy (--quiet-below, --quiet-wait)")

        quiet()
        machine_cores = (cores, parallel_cores())
        comm = allreduce_rate(sizes[0])
        scratch = iter(Path(tmp) / f"scratch{i}" for i in range(10_000))
        for _ in range(args.rounds):
            quiet()
            large = measured_run(args, Path(cfg.run_dir), next(scratch), load, args.prompts, one)
            quiet()
            small = measured_run(args, Path(cfg.run_dir), next(scratch), load, args.prompts // 2, one)
            with loopback_cluster(ADDRESSES, num_cpus=3, resources={"rollout": 1, "learner": 1}) as env, \
                    environment(env):
                same, other = remote_call_seconds(env)
                quiet()
                check = measured_run(args, Path(cfg.run_dir), next(scratch), load, args.prompts, two)
            rates = calibrate([large, small], [n_large, n_small], machine_cores, comm, sizes, other - same)
            predicted = [predict(rates, Layout(2, 2, 1, len(ADDRESSES),
                                               free_cores(machine_cores, step["others"]) / len(ADDRESSES)), n_large)
                         for step in check]
            rounds.append({"rates": rates, "predicted": predicted, "check": check, "one": large, "half": small,
                           "ratio": mean(check, "step") / mean(predicted, "step")})
    report(args, sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2], [r["ratio"] for r in rounds],
           machine_cores, n_large, comm, sizes)


def report(args: argparse.Namespace, chosen: dict, ratios: list[float], machine_cores: tuple[int, float],
           samples: int, comm: tuple[float, float], sizes: tuple[int, int]) -> None:
    """Print the table: the one-node calibration, the loopback check (predicted vs measured), and
    the model's step time for clusters of ``args.nodes`` nodes of this machine's cores."""
    cores, effective = machine_cores
    rates, predicted, check, one = chosen["rates"], chosen["predicted"], chosen["check"], chosen["one"]
    phases = list(step_model.PHASES)
    free = {name: f"{statistics.fmean(free_cores(machine_cores, s['others']) for s in steps):.2f}"
            for name, steps in (("one", one), ("check", check))}
    rows = [["1 node (calibration), measured", 1, 1, 1, 1, free["one"], "", mean(one, "step"), "",
             *(mean(one, p) for p in phases)],
            ["2 loopback nodes, predicted", 2, 2, 2, 1, free["check"], mean(predicted, "step"), "", "",
             *(mean(predicted, p) for p in phases)],
            ["2 loopback nodes, measured", 2, 2, 2, 1, free["check"], mean(predicted, "step"), mean(check, "step"),
             chosen["ratio"], *(mean(check, p) for p in phases)]]
    for nodes in args.nodes:
        p = predict(rates, Layout(nodes, nodes, 1, nodes, effective), samples)
        rows.append([f"{nodes} nodes x {cores} cores, model", nodes, nodes, nodes, 1, f"{effective:.2f}", p["step"], "", "",
                     *(p[q] for q in phases)])
    ratio = statistics.median(ratios)
    verdict = "met" if abs(ratio - 1) <= GATE else "missed"
    fits = ", ".join(f"{p} {rate.fixed_s * 1e3:.1f} ms + {rate.per_item_s * 1e3:.3f} ms/item"
                     for p, rate in rates.phases.items())
    notes = [f"{args.prompts} prompts x {args.samples} samples per step ({samples} samples; calibration also at half), "
             f"{args.max_new_tokens} new tokens, {args.steps} steps of critic-free PPO (one epoch, the batch as one "
             f"minibatch), synchronous; mean seconds per step over the steps after the first; {len(ratios)} "
             "round(s) of calibrate + check, the median round shown; predicted: each step with the cores free "
             "during it.",
             f"measured / predicted step time on 2 loopback nodes: {ratio:.2f} (rounds: "
             + ", ".join(f"{r:.2f}" for r in ratios) + f"); gate within {GATE:.0%}: {verdict}.",
             f"rates (per process, uncontended core): {fits}; gloo all-reduce {comm[0] * 1e3:.2f} ms + "
             f"{comm[1] * 1e9:.2f} ns/byte, {sizes[0] / 1e6:.2f} MB of gradients x {ZERO_COLLECTIVES} collectives, "
             f"{sizes[1] / 1e6:.2f} MB of weights; a Ray call across the loopback nodes "
             f"{rates.remote_call_s * 1e3:.1f} ms more than on one node.",
             f"free cores: two processes here get {effective:.2f} single processes' worth of throughput (of {cores} "
             "CPUs), scaled by the share other users' load (from /proc, during each step) leaves; two "
             "loopback nodes share them (modelled as 2 nodes of half of them each); phase time = (fixed + per item x "
             "items per process) x max(1, processes per node / free cores per node).",
             "cluster rows: the calibrated rates on N nodes of this machine's cores with nothing else running, one "
             "rollout worker and one learner rank per node, one reward replica."]
    common.report("Scale model: step time predicted from one-node rates, checked on 2 loopback Ray nodes",
                  ["layout", "nodes", "rollout workers", "learner ranks", "reward replicas", "free cores",
                   "predicted step s", "measured step s", "measured / predicted",
                   *(f"{p} s" for p in phases)], rows, notes, args.json)
    if args.json:  # every step's figures too, so the model can be checked again without re-running
        report_json = json.loads(Path(args.json).read_text())
        report_json["steps"] = {"calibration": one, "calibration at half": chosen["half"], "check": check,
                                "predicted": predicted}
        Path(args.json).write_text(json.dumps(report_json, indent=1))


if __name__ == "__main__":
    main()
