"""``mmrlhf train``: the whole recipe — data, sft, feedback, reward, rl, eval — and a before/after table.

Each stage is skipped when its output already exists in the run directory, so an interrupted
``train`` picks up at the first missing stage.
"""

from __future__ import annotations

import contextlib

import ray

from mmrlhf.checkpoint import CheckpointDir, config_changes, read_state
from mmrlhf.cluster import submitted_job_connection
from mmrlhf.config import RunConfig, load_config, save_config, to_dict
from mmrlhf.metrics import StageTimer
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.fit import check_cluster_fits
from mmrlhf.stats import small_sample_warning
from mmrlhf.stages.lineage import check_current

TABLE_ROWS = (("exact_match", "exact match (%)"), ("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"),
              ("reward", "reward-model score"), ("gold", "gold score"))


def _cell(metrics: dict[str, float], key: str) -> str:
    if f"{key}_low" in metrics:
        return f"{metrics[key]:.3f} [{metrics[f'{key}_low']:.3f}, {metrics[f'{key}_high']:.3f}]"
    if key == "exact_match":
        return f"{metrics[key]:.1f} ± {metrics['exact_match_stderr']:.1f}"
    return f"{metrics[key]:.3f}"


def format_table(before: dict[str, float], after: dict[str, float], split: str) -> str:
    """The SFT-vs-RLHF table as Markdown (exact match ± its standard error, in percent); on a
    small split every cell has its 95% interval in brackets and a warning ends the table."""
    lines = ["| metric | SFT | RLHF | change |", "|---|---|---|---|"]
    for key, label in TABLE_ROWS:
        if key in before and key in after:
            lines.append(f"| {label} | {_cell(before, key)} | {_cell(after, key)} | {after[key] - before[key]:+.3f} |")
    lines.append(f"\n{after.get('n', 0):.0f} held-out images ({split} split).")
    warning = small_sample_warning(int(after.get("n", 0)), f"{split} examples")
    return "\n".join(lines + ([warning] if warning else []))


def _rl_finished(cfg: RunConfig, paths: RunPaths, resume: bool) -> bool:
    """Whether the RL stage is done: its policy exists and, on ``resume``, no checkpoint is short of ``rl.steps``.

    Raises:
        ValueError: ``resume`` with a config that changes the run (see :func:`mmrlhf.checkpoint.read_state`).
    """
    if not paths.rl_policy.exists():
        return False
    latest = CheckpointDir(paths.rl_checkpoints).latest()
    return not (resume and latest is not None and read_state(latest, cfg)["step"] < cfg.rl.steps)


def check_same_run(cfg: RunConfig, paths: RunPaths) -> None:
    """Refuse a config that changes what the run directory's outputs were made with.

    ``train`` skips stages whose outputs exist, so a changed setting (an algorithm, a seed, a
    learning rate) would otherwise print the old run's table under the new config. Settings a
    resume may change (:data:`mmrlhf.checkpoint.RESUMABLE_CHANGES`) are allowed.

    Raises:
        ValueError: naming each changed key, its value in ``<run_dir>/config.yaml`` and now.
    """
    saved = paths.root / "config.yaml"
    if not saved.exists():
        return
    changed = config_changes(to_dict(load_config(saved)), to_dict(cfg), saved_as="run")
    if changed:
        raise ValueError(f"{paths.root} holds outputs made with another config ({'; '.join(changed)}): "
                         "use a new run_dir, or run the stage commands (e.g. `mmrlhf rl`) on this one")


def run_train(cfg: RunConfig, resume: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """Run every stage whose output is missing, then evaluate SFT and RLHF; returns both metrics.

    Raises ValueError (:func:`check_same_run`) when the run directory was made with another config,
    or, in a submitted job whose RL stage is still to run, before any stage when the cluster lacks
    the resources of the RL stage's actors (:func:`mmrlhf.stages.fit.check_cluster_fits`),
    and :class:`mmrlhf.stages.lineage.StaleOutputError` when a kept stage output no longer matches
    its inputs (e.g. the user's data file changed): the same checks as the stage commands.

    ``resume``: an unfinished RL stage continues from its newest checkpoint when it has one; so
    does a finished one whose ``rl.steps`` was raised (its policy is then written again).
    Stage times go to `<run_dir>/stages.jsonl`, TensorBoard and the Ray gauge
    `mmrlhf_stage_seconds` (:class:`mmrlhf.metrics.StageTimer`). In a submitted job the driver
    stays connected to the job's cluster throughout (:func:`mmrlhf.cluster.submitted_job_connection`).
    """
    from mmrlhf.stages.data import prepare_data
    from mmrlhf.stages.eval import run_eval
    from mmrlhf.stages.feedback import run_feedback_simulation
    from mmrlhf.stages.reward_train import run_reward_training
    from mmrlhf.stages.rl import run_rl
    from mmrlhf.stages.sft import run_sft

    paths = RunPaths(cfg.run_dir)
    check_same_run(cfg, paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.root / "config.yaml")
    stages = [  # (name = its output folder, done, run)
        ("data", lambda: all(paths.split(s).exists() for s in ("sft", "feedback", "val", "test")), lambda: prepare_data(cfg)),
        ("sft", paths.sft_policy.exists, lambda: run_sft(cfg)),
        ("feedback", paths.pairs.exists, lambda: run_feedback_simulation(cfg)),
        ("reward", paths.reward_model.exists, lambda: run_reward_training(cfg)),
        ("rl", lambda: _rl_finished(cfg, paths, resume),
         lambda: run_rl(cfg, resume=resume and CheckpointDir(paths.rl_checkpoints).latest() is not None)),
    ]
    with submitted_job_connection() as connected, contextlib.closing(StageTimer(paths.root)) as timed:
        if connected and not _rl_finished(cfg, paths, resume):  # refuse in seconds, not after SFT and reward
            check_cluster_fits(cfg, ray.cluster_resources(), ray.available_resources())
        for name, done, run in stages:
            if done():
                check_current(cfg, name)  # an output kept must still match its inputs and settings
                print(f"train: {name} output exists in {paths.root}, skipping")
            else:
                print(f"train: stage {name}", flush=True)
                with timed(name):
                    run()
        with timed("eval"):
            before, after = run_eval(cfg, "sft"), run_eval(cfg, "rl")
    table = format_table(before, after, cfg.eval.split)
    (paths.root / "results.md").write_text(table + "\n")
    print(table)
    return before, after
