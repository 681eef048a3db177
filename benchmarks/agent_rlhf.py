"""RLHF for control agents: true return after the same env-step budget, per env, over seeds.

For each job (`jobs/agent_cartpole.yaml`: PPO; `jobs/agent_pendulum.yaml`: SAC) and seed, three
policies: the RLlib agent trained on the learned reward (Serve frame reward model, preferences of
a simulated annotator with 10% label noise, Christiano et al. 2017), the same agent on the true
reward, and a random policy (100 episodes). The learned-reward run's budget counts the random
steps taken for its first queries. The figure is the true return at the end
(`mmrlhf.agents.report.final_return`: the mean over the last 20% of the env steps), mean ± sd over
seeds, and the issue's gates: CartPole learned >= 80% of true; Pendulum learned >= 70% of the way
from random to true. One local Ray cluster (token auth) for all runs. Each run's wall minutes, from
its config.yaml (written as it starts) to its last metrics line, are printed (the issue asks for 20
minutes at most on 2 cores). `--reuse` takes finished runs under `--out` as they are, so jobs and
seeds run at different times make one table.

    python benchmarks/agent_rlhf.py --jobs cartpole pendulum --seeds 0 1 2 --out runs/agent_bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import report  # noqa: E402
from benchmarks.rundir import local_ray  # noqa: E402
from mmrlhf.agents.config import load_agent_config  # noqa: E402
from mmrlhf.agents.report import final_return, plot_curves, random_return  # noqa: E402
from mmrlhf.agents.train import train_agent  # noqa: E402

GATES = {"cartpole": ("learned / true", 0.8), "pendulum": ("(learned - random) / (true - random)", 0.7)}


def mean_sd(values: list[float]) -> str:
    """"mean ± sd" (sd over seeds; 0 for one seed)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def run_job(job: str, seed: int, reward: str, out: Path, overrides: list[str], reuse: bool) -> tuple[list[dict], float]:
    """One agent run, or with `reuse` the finished run already in its folder; returns its metric
    rows and wall minutes (its config.yaml's write to its metrics' last line)."""
    cfg = load_agent_config(ROOT / "jobs" / f"agent_{job}.yaml",
                            [*overrides, f"seed={seed}", f"reward={reward}", f"run_dir={out / job / reward / str(seed)}"])
    agent = cfg.run_path / "agent"
    metrics = agent / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if reuse and metrics.exists() else []
    if not rows or rows[-1]["env_steps"] < cfg.rl.env_steps:
        if agent.exists():
            shutil.rmtree(agent)  # an unfinished run starts over
        rows = train_agent(cfg, echo=lambda line: print(f"[{job} {reward} seed {seed}] {line}", flush=True))
    return rows, (metrics.stat().st_mtime - (agent / "config.yaml").stat().st_mtime) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["cartpole", "pendulum"], choices=sorted(GATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/agent_bench")
    parser.add_argument("--json", default=None)
    parser.add_argument("--reuse", action="store_true", help="take finished runs under --out instead of running them")
    parser.add_argument("overrides", nargs="*", help="key=value for every run, e.g. rl.env_steps=20000")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    rows, notes = [], []
    with local_ray(num_cpus=4):
        for job in args.jobs:
            finals: dict[str, list[float]] = {"learned": [], "true": [], "random": []}
            curves, minutes = {}, {"learned": [], "true": []}
            for seed in args.seeds:
                for policy, reward in (("learned", "learned"), ("true", "env")):
                    history, wall = run_job(job, seed, reward, out, args.overrides, args.reuse)
                    finals[policy].append(final_return(history))
                    minutes[policy].append(wall)
                    curves[f"{policy} reward, seed {seed}"] = ([r["env_steps"] for r in history],
                                                               [r["true_return"] for r in history])
                env_id = load_agent_config(ROOT / "jobs" / f"agent_{job}.yaml").env.env_id
                finals["random"].append(random_return(env_id, 100, seed))
            learned, true, rand = (statistics.mean(finals[k]) for k in ("learned", "true", "random"))
            ratio = learned / true if job == "cartpole" else (learned - rand) / (true - rand)
            steps = history[-1]["env_steps"]
            for policy in ("learned", "true", "random"):
                rows.append([job, policy, steps, mean_sd(finals[policy]), " ".join(f"{v:.1f}" for v in finals[policy]),
                             f"{max(minutes[policy]):.1f}" if policy in minutes else "-"])
            name, gate = GATES[job]
            notes.append(f"{job}: {name} = {ratio:.2f} (gate >= {gate}: {'met' if ratio >= gate else 'missed'})")
            plot_curves(out / f"{job}_curves.png", curves, rand, f"{env_id}: true return")
            (out / f"{job}.json").write_text(json.dumps({"finals": finals, "minutes": minutes, "ratio": ratio}))
    report("RLHF for control agents (true return at the end)",
           ["job", "policy", "env steps", "true return (mean ± sd)", "per seed", "max minutes"], rows, notes, args.json)


if __name__ == "__main__":
    main()
