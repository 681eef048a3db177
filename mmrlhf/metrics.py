"""What a run reports while it runs: Ray metrics, TensorBoard, the JSONL log, progress bars, a plot.

Ray metrics (`ray.util.metrics`) go to the metrics agent of the node the recording process runs
on, which serves them for Prometheus on the node's `--metrics-export-port`; the Ray dashboard and
the Grafana dashboard in `cluster/grafana_dashboard.json` read them from there. Ray puts its own
`ray_` prefix before every application metric, so `mmrlhf_kl` is scraped as `ray_mmrlhf_kl`, and a
`Counter` named `mmrlhf_rl_steps` as `ray_mmrlhf_rl_steps_total` (Ray docs, "Adding Application-Level
Metrics"). A gauge is served while the process that set it lives; Ray drops it about two export
intervals (`RAY_metrics_report_interval_ms`, 10 s by default) after that process exits.

Recording needs no connection: without `ray.init()` the values stay in the process and nothing is
exported, so the same code runs in unit tests and on a laptop.

Files in the run directory: `rl/metrics.jsonl` (one JSON object per RL step), `tensorboard/`
(`torch.utils.tensorboard.SummaryWriter` event files: every RL metric by step, stage times, SFT
losses by epoch, reward-training accuracies, eval metrics and review samples as text),
`stages.jsonl` (one line per finished stage of `mmrlhf train`) and `rl/metrics.png` (reward, gold
score and KL over the steps, written when the RL stage ends).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ray.util.metrics import Counter, Gauge, Histogram
from tqdm import tqdm

from mmrlhf.stages.common import RunPaths

# RL metric key -> (Ray gauge name, description); keys as returned by `controller.train_loop`.
RL_GAUGES = {
    "rollout/reward": ("mmrlhf_reward_mean", "mean total reward (weighted reward sources) of the step's rollout"),
    "rollout/gold": ("mmrlhf_gold_mean", "mean gold score of the step's rollout (tasks with an oracle)"),
    "rollout/kl": ("mmrlhf_kl", "mean KL(policy || reference) per response, nats"),
    "policy/entropy": ("mmrlhf_entropy", "mean token entropy of the policy in the update (PPO or SAC), nats"),
    "sync/version": ("mmrlhf_policy_version", "policy version the rollout workers hold after the step"),
    "rollout/policy_lag": ("mmrlhf_policy_lag", "versions between the newest policy and the oldest in the rollout"),
    "rollout/samples_per_s": ("mmrlhf_samples_per_second", "samples generated, scored and trained on per second"),
    "rollout/tokens_per_s": ("mmrlhf_tokens_per_second", "response tokens generated per second"),
}
# RL metric key -> (Ray histogram name, description); one observation per step, in seconds.
RL_HISTOGRAMS = {
    "sync/seconds": ("mmrlhf_weight_sync_seconds", "weight sync: gather, publish and load on every worker, s"),
    "time/step_seconds": ("mmrlhf_rl_step_seconds", "one RL step: generate, score, experience, update, sync, s"),
}
SECONDS_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]
PHASES = ("time/rollout", "time/experience", "time/update", "time/sync", "time/checkpoint")


def tensorboard_dir(run_dir: str | Path) -> Path:
    """Where a run's TensorBoard event files go: `<run_dir>/tensorboard`."""
    return Path(run_dir) / "tensorboard"


def rl_plot_path(run_dir: str | Path) -> Path:
    """The PNG plot of the RL stage: `<run_dir>/rl/metrics.png`."""
    return Path(run_dir) / "rl" / "metrics.png"


def record_reward_latency(score: Callable) -> Callable:
    """Wrap a scoring call so each call's wall time goes to `mmrlhf_reward_latency_seconds`.

    score: any callable (e.g. a call of the reward deployment through its `DeploymentHandle`);
    the wrapper returns its result unchanged and observes the seconds even when it raises.
    Build it inside the process that calls it (a rollout worker), where the metric is recorded.
    """
    latency = Histogram("mmrlhf_reward_latency_seconds", "reward deployment call as seen by a rollout worker, s",
                        boundaries=SECONDS_BUCKETS)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return score(*args, **kwargs)
        finally:
            latency.observe(time.perf_counter() - start)

    return timed


def log_to_tensorboard(run_dir: str | Path, steps: Sequence[dict[str, float]], texts: dict[str, str] | None = None,
                       prefix: str = "") -> None:
    """Write one stage's scalars (and texts) to the run's TensorBoard event files.

    steps: one dict of scalars per step (``steps[i]`` at global step i: an SFT epoch; a single
    entry for reward training or eval); keys become tags ``prefix + key``; non-numbers are skipped.
    texts: tag -> Markdown text (e.g. the eval review samples), at step 0.
    """
    from torch.utils.tensorboard import SummaryWriter

    with contextlib.closing(SummaryWriter(str(tensorboard_dir(run_dir)))) as writer:
        for step, scalars in enumerate(steps):
            for key, value in scalars.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(prefix + key, value, global_step=step)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, global_step=0)


class RLMetricsLogger:
    """Reports each RL step to the JSONL log, TensorBoard, Ray metrics and a progress bar.

    run_dir: the run directory; steps: the stage's total step count (for the bar); start_step:
    the first step this process runs (a resumed run starts later). `close()` writes the plot
    from the whole JSONL log (earlier processes' steps included) and closes the files.
    """

    def __init__(self, run_dir: str | Path, steps: int, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = RunPaths(run_dir).rl_metrics
        self.plot = rl_plot_path(run_dir)
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(tensorboard_dir(run_dir)))
        self.gauges = {key: Gauge(name, doc) for key, (name, doc) in RL_GAUGES.items()}
        self.histograms = {key: Histogram(name, doc, boundaries=SECONDS_BUCKETS)
                           for key, (name, doc) in RL_HISTOGRAMS.items()}
        self.steps_done = Counter("mmrlhf_rl_steps", "RL steps finished")
        self.bar = tqdm(total=steps, initial=start_step, desc="rl", unit="step")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Report step `step` (0-based). Adds `rollout/tokens_per_s` to `metrics` from
        `rollout/response_tokens` (mean per sample) and `rollout/samples_per_s` when both are there."""
        if "rollout/response_tokens" in metrics and "rollout/samples_per_s" in metrics:
            metrics["rollout/tokens_per_s"] = metrics["rollout/response_tokens"] * metrics["rollout/samples_per_s"]
        with self.jsonl.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()
        for key, gauge in self.gauges.items():
            if math.isfinite(metrics.get(key, math.nan)):
                gauge.set(metrics[key])
        for key, histogram in self.histograms.items():
            if key in metrics:
                histogram.observe(metrics[key])
        self.steps_done.inc()
        self.bar.update(1)
        self.bar.write(
            f"rl step {step + 1}/{self.bar.total}: reward {metrics.get('rollout/reward', math.nan):.3f} "
            f"gold {metrics.get('rollout/gold', math.nan):.3f} kl {metrics.get('rollout/kl', math.nan):.4f} "
            f"all-alike {metrics.get('rollout/all_alike', math.nan):.2f} "
            + (f"clipfrac {metrics['ppo/clipfrac']:.3f} " if "ppo/clipfrac" in metrics else "")
            + (f"q {metrics['sac/q']:.3f} " if "sac/q" in metrics else "")
            + f"step {metrics.get('time/step_seconds', math.nan):.2f}s ("
            + " ".join(f"{k.split('/')[1]} {metrics[k]:.2f}" for k in PHASES if k in metrics)
            + (f") startup {metrics['time/startup']:.1f}s" if "time/startup" in metrics else ")"))

    def close(self) -> None:
        """Write the plot of every step in the JSONL log (none if it is empty) and close the files."""
        self.bar.close()
        self.writer.close()
        history = [json.loads(line) for line in self.jsonl.read_text().splitlines()] if self.jsonl.exists() else []
        if history:
            plot_rl_history(history, self.plot)


def _points(history: Sequence[dict[str, float]], key: str) -> list[tuple[float, float]]:
    return [(m["step"], m[key]) for m in history if math.isfinite(m.get(key, math.nan))]


def plot_rl_history(history: Sequence[dict[str, float]], out: Path) -> None:
    """Two panels as one PNG (matplotlib, Agg): the proxy reward (reward sources' total) and the
    gold score per step on one plot (two y axes), so over-optimisation (proxy up, gold down) is
    visible at a glance; the KL to the reference policy below.

    history: per-step metric dicts with a "step" key; a series that never appears says so.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    proxy, gold, kl = (_points(history, k) for k in ("rollout/reward", "rollout/gold", "rollout/kl"))
    if proxy:
        top.plot(*zip(*proxy), marker="o", markersize=3, color="tab:blue", label="proxy reward")
    top.set_ylabel("proxy reward", color="tab:blue")
    twin = top.twinx()
    if gold:
        twin.plot(*zip(*gold), marker="s", markersize=3, color="tab:orange", label="gold score")
    twin.set_ylabel("gold score" if gold else "gold score (not measured)", color="tab:orange")
    top.set_title(gold_verdict(history))
    top.grid(alpha=0.3)
    if kl:
        bottom.plot(*zip(*kl), marker="o", markersize=3, color="tab:green")
    else:
        bottom.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("KL to reference (nats)")
    bottom.set_xlabel("RL step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def gold_verdict(history: Sequence[dict[str, float]], window: int = 5) -> str:
    """One line: did the gold score rise with the proxy reward? Compares the mean of the first
    and last ``window`` steps of each ("rollout/reward", "rollout/gold")."""
    def change(key: str) -> float | None:
        values = [v for _, v in _points(history, key)]
        if len(values) < 2:
            return None
        n = max(1, min(window, len(values) // 2))
        return sum(values[-n:]) / n - sum(values[:n]) / n

    proxy, gold = change("rollout/reward"), change("rollout/gold")
    if proxy is None:
        return "proxy reward: too few steps to compare"
    if gold is None:
        return f"proxy reward {proxy:+.3f}; no gold score to check it against"
    if proxy > 0 and gold < 0:
        verdict = "OVER-OPTIMISED: the proxy rose while gold fell"
    elif gold > 0:
        verdict = "gold rose" + (" with the proxy" if proxy > 0 else " although the proxy did not")
    else:
        verdict = "gold did not rise"
    return f"proxy reward {proxy:+.3f}, gold {gold:+.3f} (first vs last {window} steps): {verdict}"


class PhaseTimer:
    """Wall seconds of named phases of one RL step: ``with timer("time/update"): ...``; a phase
    entered twice adds up. ``seconds``: {phase: seconds}; ``total``: their sum."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        """Seconds of all phases together."""
        return sum(self.seconds.values())


class StageTimer:
    """Times the stages of `mmrlhf train`: `<run_dir>/stages.jsonl`, TensorBoard and
    the Ray gauge `mmrlhf_stage_seconds{stage=...}` (seconds of wall time).

    `with timer("sft"): run_sft(cfg)` records the stage only when its block finishes without error.
    """

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log = Path(run_dir) / "stages.jsonl"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(tensorboard_dir(run_dir)))
        self.gauge = Gauge("mmrlhf_stage_seconds", "wall time of the last finished run of each stage, s",
                           tag_keys=("stage",))

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        with self.log.open("a") as f:
            f.write(json.dumps({"stage": stage, "seconds": seconds}) + "\n")
        self.writer.add_scalar(f"stage_seconds/{stage}", seconds)
        self.writer.flush()
        self.gauge.set(seconds, tags={"stage": stage})

    def close(self) -> None:
        """Close the TensorBoard writer."""
        self.writer.close()
