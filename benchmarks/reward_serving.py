"""Reward serving: requests/s, items/s, p50/p99 latency of Serve at @serve.batch sizes 1, 8, 32 vs an in-process call.

The scorer is the default run's reward model (`RewardScorer` over the `small` preset, built here
from its config with random weights: the cost of a forward does not depend on training), the
only source, as in `mmrlhf rl` by default. Each item is a 64x64 uint8 grey image (the digits
canvas) and a response of 1-4 number words; a request is `handle.score.remote(images, texts,
references, prompts)` through a `DeploymentHandle`, as `rollout.worker.serve_scorer` sends it.
Two request shapes, each its own rows:

- `--items 1` per request at `--concurrency 64` (the issue's shape: many small callers);
- a rollout per request (`--rollout-items 64`: the default run's 32 prompts x 4 samples over
  2 rollout workers) at `--rollout-concurrency 2` (its 2 workers), what the RL loop sends.

Serve settings, the same for every batch size: one replica with 1 CPU (Ray gives it 1 torch
thread), `max_ongoing_requests` = `--max-ongoing`, default `build_reward_app`'s
max(MIN_ONGOING_REQUESTS = 64, 2 x batch size), so no request of 64 concurrent callers waits in
Serve's router (at 2 x batch size a batch-1 replica took 2 and the router held the rest, backing
off), `batch_wait_timeout_s` 0.01 (the run's default). In-process: the same
scorer (`RewardSources.score`) in the driver with 1 torch thread, on the same items in chunks of
32 (the largest batch), no Ray. Clients are asyncio tasks in the driver (each awaits its
response, then sends the next request); the driver's other core runs them and Serve's router.
Deployments and the in-process call alternate, round by round. One more row per shape, Serve's
own ceiling here: a replica whose batched method returns zeros (`NoopScorer`, batch 32, the same
settings and clients), i.e. what Serve's routing, handle calls and event loop allow with a free
scorer. Gates (issue 14): batch 32 >= 5x batch-1 throughput and >= 0.7x the in-process call.

    python benchmarks/reward_serving.py [--preset small] [--rounds 3] [--json out.json]
    python benchmarks/reward_serving.py --quick     # < 1 minute smoke run (tiny preset, few requests)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common
from rundir import local_ray

BATCH_SIZES = (1, 8, 32)
IN_PROCESS = "in-process"
NOOP = "no-op scorer, batch 32"
GATE_BATCHING, GATE_IN_PROCESS = 5.0, 0.7
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def noop_app(max_ongoing_requests: int):
    """A Serve app with the reward app's call signature whose batched method scores nothing (zeros):
    Serve's own cost per request, one replica with 1 CPU, batch 32, the same timeout."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=max_ongoing_requests, ray_actor_options={"num_cpus": 1})
    class NoopScorer:
        @serve.batch(max_batch_size=max(BATCH_SIZES), batch_wait_timeout_s=0.01)
        async def score(self, images, texts, references, prompts):
            return [{"total": [0.0] * len(batch)} for batch in images]

    return NoopScorer.bind()


def make_items(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n (64, 64) uint8 images and n responses of 1-4 number words."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(n)]
    texts = [" ".join(rng.choice(WORDS, rng.integers(1, 5))) for _ in range(n)]
    return images, texts


def requests(images: list[np.ndarray], texts: list[str], per_request: int) -> list[tuple]:
    """The items cut into requests of `per_request`: (images, texts, references, prompts) each."""
    out = []
    for start in range(0, len(images), per_request):
        chunk = slice(start, start + per_request)
        n = len(images[chunk])
        out.append((images[chunk], texts[chunk], [None] * n, ["What number is written?"] * n))
    return out


async def drive(handle, reqs: list[tuple], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of `concurrency` clients sending `reqs` through `handle`."""
    pending = iter(reqs)
    latencies: list[float] = []

    async def client() -> None:
        for req in pending:
            start = time.perf_counter()
            await handle.score.remote(*req)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def in_process(sources, reqs: list[tuple], chunk: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of scoring every request's items in-process, `chunk` at a time."""
    items = [tuple(column[i] for column in req) for req in reqs for i in range(len(req[0]))]
    start = time.perf_counter()
    for begin in range(0, len(items), chunk):
        sources.score(*(list(column) for column in zip(*items[begin:begin + chunk])))
    wall = time.perf_counter() - start
    return wall, [wall / len(reqs)] * len(reqs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="reward model preset (the default run's: small)")
    parser.add_argument("--items", type=int, default=1, help="items per request, first shape")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=512, help="requests per measurement, first shape")
    parser.add_argument("--rollout-items", type=int, default=64, help="items per request, rollout shape")
    parser.add_argument("--rollout-concurrency", type=int, default=2)
    parser.add_argument("--rollout-requests", type=int, default=16)
    parser.add_argument("--max-ongoing", type=int, default=None,
                        help="Serve max_ongoing_requests per replica (default: build_reward_app's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 64 + 4 requests, 1 round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.requests, args.rollout_items, args.rollout_requests, args.rounds = "tiny", 64, 16, 4, 1

    from mmrlhf.config import RewardSourceConfig
    from mmrlhf.models.presets import build_reward_preset
    from mmrlhf.reward.scorer import RewardScorer
    from mmrlhf.reward.serve_app import MIN_ONGOING_REQUESTS, build_reward_app, deploy_reward
    from mmrlhf.reward.sources import RewardSources
    from ray import serve

    first = f"{args.items} item{'s' if args.items > 1 else ''}/request, concurrency {args.concurrency}"
    shapes = {first: (args.items, args.concurrency, args.requests),
              f"{args.rollout_items} items/request (a rollout), concurrency {args.rollout_concurrency}":
                  (args.rollout_items, args.rollout_concurrency, args.rollout_requests)}
    with tempfile.TemporaryDirectory() as scratch, local_ray(num_cpus=4):
        weights = build_reward_preset(args.preset, Path(scratch) / "reward")
        torch.set_num_threads(1)  # as the replica (1 CPU: Ray sets OMP_NUM_THREADS=1)
        sources = RewardSources([RewardSourceConfig()])
        sources.scorer = RewardScorer.from_pretrained(weights)
        handles = {b: deploy_reward(build_reward_app(weights, max_batch_size=b, max_ongoing_requests=args.max_ongoing,
                                                     ray_actor_options={"num_cpus": 1}), name=f"reward-b{b}")
                   for b in BATCH_SIZES}
        noop = serve.run(noop_app(args.max_ongoing or max(MIN_ONGOING_REQUESTS, 2 * max(BATCH_SIZES))),
                         name="reward-noop", route_prefix=None)
        results: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
        loop = asyncio.new_event_loop()
        try:
            for shape, (per_request, concurrency, count) in shapes.items():
                reqs = requests(*make_items(per_request * count, seed=len(results)), per_request)

                def measure(name, handle=None):
                    def run() -> float:
                        if handle is None:
                            wall, lat = in_process(sources, reqs, max(BATCH_SIZES))
                        else:
                            wall, lat = loop.run_until_complete(drive(handle, reqs, concurrency))
                        results.setdefault((shape, name), []).append((wall, lat))
                        return wall
                    return run

                runs = {f"batch {b}": measure(f"batch {b}", h) for b, h in handles.items()}
                runs[IN_PROCESS] = measure(IN_PROCESS)
                runs[NOOP] = measure(NOOP, noop)
                common.alternating(runs, args.rounds)
        finally:
            loop.close()
            serve.shutdown()

    rows, ratios = [], {}
    for shape, (per_request, concurrency, count) in shapes.items():
        rate = {}
        names = [*(f"batch {b}" for b in BATCH_SIZES), IN_PROCESS, NOOP]
        for name in names:
            measured = results[(shape, name)][1:]  # the first is the warm-up round
            wall = statistics.median(w for w, _ in measured)
            latencies = np.concatenate([lat for _, lat in measured])
            rate[name] = count / wall
            rows.append([shape, name, rate[name], rate[name] * per_request, 1e3 * np.percentile(latencies, 50),
                         1e3 * np.percentile(latencies, 99)])
        ratios[shape] = (rate["batch 32"] / rate["batch 1"], rate["batch 32"] / rate[IN_PROCESS])
        for row in rows[-len(names):]:
            row += [rate[row[1]] / rate["batch 1"], rate[row[1]] / rate[IN_PROCESS]]
    ongoing = [args.max_ongoing or max(MIN_ONGOING_REQUESTS, 2 * b) for b in BATCH_SIZES]
    notes = [f"reward model preset {args.preset!r} (RewardScorer), one replica with 1 CPU, max_ongoing_requests="
             f"{ongoing} (batch {list(BATCH_SIZES)}), batch_wait_timeout_s=0.01; median of {args.rounds} alternating "
             "rounds after a warm-up; latency percentiles over every request of those rounds (in-process: the "
             "wall time per request).",
             "in-process = RewardSources.score on the same items, 32 at a time, 1 torch thread, no Ray.",
             f"{NOOP} = a Serve replica returning zeros with the same settings and clients: Serve's own ceiling "
             "on this machine, the most any scorer behind it could reach."]
    for shape, (batching, versus) in ratios.items():
        verdict = "met" if batching >= GATE_BATCHING and versus >= GATE_IN_PROCESS else "missed"
        notes.append(f"{shape}: batch 32 = {batching:.2f}x batch 1 (gate >= {GATE_BATCHING}), {versus:.2f}x "
                     f"in-process (gate >= {GATE_IN_PROCESS}): {verdict}.")
    common.report("Reward serving: @serve.batch sizes vs an in-process call",
                  ["request shape", "set-up", "requests/s", "items/s", "p50 ms", "p99 ms", "vs batch 1",
                   "vs in-process"], rows, notes, args.json)


if __name__ == "__main__":
    main()
