"""Stage 5, rl: PPO or SAC with rollout workers, a Serve reward deployment and a DeepSpeed learner group.

The reward is the weighted sum of ``reward.sources`` (:mod:`mmrlhf.reward.sources`); a task with
a gold score (``data.gold_reward``) gets it as one more source, weight 0 unless listed, so its
``rollout/gold`` metric is just that source's mean.

Sets up the distributed parts from the config (resources included), runs
:func:`mmrlhf.controller.train_loop`, checkpoints it (:mod:`mmrlhf.checkpoint`), saves the final
policy to ``<run_dir>/rl/policy`` and tears everything down, also on failure. ``ray.init()``
joins ``RAY_ADDRESS`` when set (a submitted job), else starts a local cluster big enough for the
configured actors; a driver already connected to Ray keeps its cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray
from ray import serve
from transformers import AutoTokenizer

from mmrlhf.algorithms.kl import AdaptiveKLController, FixedKLController
from mmrlhf.checkpoint import CheckpointDir, read_state, restore_run, save_run, truncate_log
from mmrlhf.cluster import init_ray, shutdown_ray
from mmrlhf.config import CLIPSCORE_SOURCE, MODEL_SOURCE, RewardSourceConfig, RunConfig, uses_model
from mmrlhf.controller import train_loop
from mmrlhf.learner.rl_group import RLLearnerGroup
from mmrlhf.metrics import PhaseTimer, RLMetricsLogger, gold_verdict
from mmrlhf.models.policy import load_policy, pad_token_id
from mmrlhf.reward.serve_app import build_reward_app, deploy_reward
from mmrlhf.reward.sources import load_rule_functions
from mmrlhf.rollout.prompts import PromptSource
from mmrlhf.rollout.worker import RolloutGroup, serve_scorer
from mmrlhf.stages.common import RunPaths, atomic_dir, policy_path
from mmrlhf.stages.reward_train import reward_model_version
from mmrlhf.stages.lineage import REWARD, RL, SFT, check_current, lineage_of, stage_input, write_lineage
from mmrlhf.stages.fit import check_cluster_fits, check_prompts_fit, check_split_fits_positions, warn_truncation
from mmrlhf.stages.data import load_split, prepare_data
from mmrlhf.sync import ObjectStoreTransport, WeightSync, load_state_dict_strict
from mmrlhf.weight_slots import remove_slots, same_machine

REWARD_APP = "reward"


def _actor_options(cpus: float, gpus: float, resource: str | None) -> dict:
    return {"num_cpus": cpus, "num_gpus": gpus, **({"resources": {resource: 1}} if resource else {})}


def _device(gpus: float) -> str:
    """Where an actor given ``gpus`` GPUs runs its model (Ray sets its CUDA_VISIBLE_DEVICES)."""
    return "cuda" if gpus > 0 else "cpu"


def _local_cpus(cfg: RunConfig) -> int:
    """Logical CPUs for a local cluster: enough for every configured actor, at least the machine's."""
    r = cfg.resources
    needed = (cfg.rl.rollout_workers * r.rollout_cpus + cfg.rl.learner_ranks * r.learner_cpus
              + cfg.reward.max_replicas * r.reward_cpus)
    return r.num_cpus or max(os.cpu_count() or 1, int(needed + 0.999))


def reward_sources(cfg: RunConfig) -> list[RewardSourceConfig]:
    """``reward.sources``, and the task's gold reward (``data.gold_reward``) with weight 0 (for
    the ``rollout/gold`` metric) unless it is listed already."""
    sources, gold = list(cfg.reward.sources), cfg.data.gold_reward
    if gold is not None and gold not in (s.name for s in sources):
        sources.append(RewardSourceConfig(gold, weight=0.0))
    return sources


def rl_inputs(cfg: RunConfig, force: bool = False) -> str:
    """The SFT policy's path, after checking the RL stage's inputs: the SFT policy, the reward
    model when it is a reward source, that every rule-function source can be imported, and that
    the inputs are current (:func:`mmrlhf.stages.lineage.check_current`, skipped with ``force``).

    Raises:
        FileNotFoundError: naming the missing output and the command that makes it.
        StaleOutputError: naming the stale output and the command that makes it again.
        ValueError: a reward source that cannot be imported or called (names it, one line), or
            ``rl.prompts_per_step`` exceeds the feedback split, or a record's image + prompt +
            ``rl.max_new_tokens`` exceed the policy's positions (names it). References longer than
            ``rl.max_new_tokens`` are logged as a warning with the share that would be cut.
    """
    sft = str(policy_path(cfg, "sft"))
    sources = reward_sources(cfg)
    load_rule_functions(sources)
    reward_model = RunPaths(cfg.run_dir).reward_model
    if uses_model(sources) and not (reward_model / "config.json").exists():
        raise FileNotFoundError(f"no reward model at {reward_model}: run `mmrlhf reward train` first "
                                "(or leave 'model' and 'clipscore' out of reward.sources)")
    for stage in (SFT, REWARD) if uses_model(sources) else (SFT,):
        check_current(cfg, stage.folder, force)
    pool = load_split(cfg, "feedback")
    check_prompts_fit("rl.prompts_per_step", cfg.rl.prompts_per_step, "feedback", pool.num_rows)
    warn_truncation(AutoTokenizer.from_pretrained(sft), [r for r in pool.column("reference").to_pylist() if r],
                    cfg.rl.max_new_tokens, "rl.max_new_tokens", "the feedback split's references")
    check_split_fits_positions(sft, pool, cfg.data.media, cfg.rl.max_new_tokens, "rl.max_new_tokens")
    return sft


def start_reward_deployment(cfg: RunConfig, sources: list[RewardSourceConfig], version: int = 0) -> None:
    """Deploy the reward sources on Serve (batched, autoscaled, HTTP only if enabled); the trained
    reward model is loaded only when it is one of ``sources``. ``version`` goes into the
    user_config and comes back on every scored row (``Rollout.reward_version``). Deploying again
    with only another ``version`` (new weights in ``reward/model``) swaps them into the live
    replicas in place (:func:`swap_reward_weights`)."""
    rc, res = cfg.reward, cfg.resources
    replicas = {"min_replicas": rc.min_replicas, "max_replicas": rc.max_replicas,
                "target_ongoing_requests": rc.target_ongoing_requests}
    # absolute: Serve replicas run in the cluster's working directory, not the driver's
    weights_dir = RunPaths(cfg.run_dir).reward_model.resolve() if uses_model(sources) else None
    app = build_reward_app(weights_dir, sources=sources, max_batch_size=rc.max_batch_size,
                           replicas=replicas if rc.max_replicas > rc.min_replicas else rc.min_replicas,
                           ray_actor_options=_actor_options(res.reward_cpus, res.reward_gpus, res.reward_resource),
                           batch_wait_timeout_s=rc.batch_wait_timeout_s,
                           health_check_period_s=rc.health_check_period_s,
                           health_check_timeout_s=rc.health_check_timeout_s,
                           device=_device(res.reward_gpus), version=version)
    deploy_reward(app, name=REWARD_APP, route_prefix="/reward" if rc.http else None, http_port=rc.http_port)


def swap_reward_weights(cfg: RunConfig, version: int) -> None:
    """Swap the weights now in ``reward/model`` (from ``reward train --append``) into the running
    RL stage's reward deployment, in place: a new user_config whose ``version`` each replica's
    ``reconfigure`` takes between batches, so no request fails and every row scored afterwards
    carries ``version``. Needs a Ray connection to the cluster the RL stage runs on.
    Raises ValueError when no reward source is the learned model (there are no weights to swap).
    """
    sources = reward_sources(cfg)
    if not uses_model(sources):
        raise ValueError(f"swap_reward_weights: reward.sources {[s.name for s in sources]} has no learned "
                         f"model ({MODEL_SOURCE!r} or {CLIPSCORE_SOURCE!r}), so there are no weights to swap")
    start_reward_deployment(cfg, sources, version)


def save_policy(learner_group: RLLearnerGroup, sft_path: str, out: Path) -> None:
    """Write the learner's current policy with ``save_pretrained`` (atomically) next to its processor."""
    model, processor = load_policy(sft_path)
    load_state_dict_strict(model, ray.get(learner_group.weights()))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


@dataclass
class RLSystem:
    """The distributed parts of the RL stage, built from the config by :func:`rl_system`."""

    rollout_group: RolloutGroup
    learner_group: RLLearnerGroup
    weight_sync: WeightSync
    prompts: PromptSource
    kl_controller: FixedKLController | AdaptiveKLController
    policy_path: str
    startup: dict[str, float]  # {"time/startup/<part>": seconds}: inputs, serve, learners, rollout_workers


@contextlib.contextmanager
def rl_system(cfg: RunConfig, force: bool = False) -> Iterator[RLSystem]:
    """Deploy the reward model, start the rollout workers and the learner group; tear down on exit.

    Needs a connected Ray cluster (see :func:`run_rl`); removes the Serve application, the
    actors and the placement group on exit, also after an error. ``force``: as in :func:`rl_inputs`.

    Raises:
        ValueError: the cluster lacks resources the configured actors need (names them).
        FileNotFoundError: no SFT policy or no reward model yet.
        ValueError: a reward source that cannot be imported or called.
    """
    rl, res = cfg.rl, cfg.resources
    timer = PhaseTimer()
    with timer("time/startup/inputs"):
        check_cluster_fits(cfg, ray.cluster_resources(), ray.available_resources())
        sft = str(Path(rl_inputs(cfg, force)).resolve())  # actors run in the cluster's working directory
        prepare_data(cfg, force=force)
        pool = load_split(cfg, "feedback")
    rollout_group = learner_group = slots = None
    try:
        with timer("time/startup/serve"):
            start_reward_deployment(cfg, reward_sources(cfg), reward_model_version(cfg))
        transport = ObjectStoreTransport()
        timeout_s, retries = cfg.reward.score_timeout_s, cfg.reward.score_retries
        rollout_group = RolloutGroup(
            rl.rollout_workers,
            dict(policy_path=sft, scorer_factory=lambda: serve_scorer(REWARD_APP, timeout_s=timeout_s, retries=retries),
                 seed=cfg.seed, temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                 max_new_tokens=rl.max_new_tokens,
                 media=cfg.data.media, device=_device(res.rollout_gpus)),
            _actor_options(res.rollout_cpus, res.rollout_gpus, res.rollout_resource),
            pad_token_id(sft), transport)
        with timer("time/startup/learners"):  # the rollout workers start meanwhile
            learner_group = RLLearnerGroup(rl, sft, res.learner_cpus, res.learner_gpus,
                                            {res.learner_resource: 1} if res.learner_resource else None, cfg.seed)
        with timer("time/startup/rollout_workers"):  # what is left of their start once the learners are up
            rollout_group.versions()
        if same_machine([*rollout_group.workers, learner_group.workers[0]]):  # weight slots (mmrlhf.weight_slots)
            slots = f"mmrlhf-weights-{uuid.uuid4().hex[:12]}"
        yield RLSystem(
            rollout_group, learner_group, WeightSync(rollout_group.workers, transport, slots),
            PromptSource(pool, rl.prompts_per_step, cfg.seed),
            AdaptiveKLController(rl.kl_coef, rl.kl_target, 10_000) if rl.kl_target else FixedKLController(rl.kl_coef),
            sft, timer.seconds)
    finally:
        if learner_group is not None:
            learner_group.shutdown()
        if rollout_group is not None:
            rollout_group.shutdown()
        if slots is not None:
            remove_slots(slots)  # also when rank 0 died before its own clean-up
        serve.delete(REWARD_APP)


def run_rl(cfg: RunConfig, resume: bool = False, force: bool = False) -> list[dict[str, float]]:
    """Run the RL stage; returns the metrics of the steps it ran (also in ``<run_dir>/rl/metrics.jsonl``).

    Checkpoints every ``rl.checkpoint_every`` steps and after the last one; ``resume`` continues
    from the newest complete checkpoint, and the logs (``metrics.jsonl``, ``consumed.jsonl``)
    drop the lines of steps that run again. Each step is also reported by
    :class:`mmrlhf.metrics.RLMetricsLogger`. A Ray connection that is already open (``mmrlhf
    train`` in a submitted job) is used and left open; otherwise ``ray.init()`` joins
    ``RAY_ADDRESS`` when set, else starts (and afterwards stops) a local cluster sized for the
    configured actors. Writes ``rl/lineage.json`` once the policy is saved.

    Raises:
        StaleOutputError: the SFT policy or reward model is stale (unless ``force``).
        FileNotFoundError: no SFT policy or no reward model yet; ``resume`` without a checkpoint.
        FileExistsError: checkpoints of an earlier run exist and ``resume`` is off.
        ValueError: ``resume`` with a config that changes the run (names the settings); a reward
            source that cannot be imported, or that fails on a batch (names it).
        mmrlhf.learner.group.LearnerRankDied: a learner rank died (names it).
        RuntimeError: the learner group could not be placed or a rank failed (names the cause).
    """
    started = time.perf_counter()
    rl_inputs(cfg, force)  # before anything is started or written
    paths = RunPaths(cfg.run_dir)
    inputs = [SFT, REWARD] if uses_model(reward_sources(cfg)) else [SFT]
    record = lineage_of(cfg, RL, [*(stage_input(cfg, stage) for stage in inputs), paths.split("feedback")])
    # absolute: the learner ranks write their shards from the cluster's working directory
    checkpoints = CheckpointDir(paths.rl_checkpoints.resolve(), keep=cfg.rl.keep_checkpoints)
    start = checkpoints.latest()
    if resume and start is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {paths.rl_checkpoints}")
    if not resume and start is not None:
        raise FileExistsError(f"{paths.rl_checkpoints} holds an earlier run's checkpoints: pass --resume to "
                              "continue it, or delete the folder to start over")
    state = read_state(start, cfg) if resume else None
    history: list[dict[str, float]] = []
    paths.rl_metrics.parent.mkdir(parents=True, exist_ok=True)
    for log in (paths.rl_metrics, paths.rl_consumed):
        truncate_log(log, state["step"] if state else 0)
    owned = not ray.is_initialized()
    local = not os.environ.get("RAY_ADDRESS")
    ray_start = time.perf_counter()
    if owned:
        init_ray(num_cpus=_local_cpus(cfg) if local else None, include_dashboard=False if local else None)
    ray_seconds = time.perf_counter() - ray_start
    logger = RLMetricsLogger(cfg.run_dir, cfg.rl.steps, state["step"] if state else 0)  # JSONL, TensorBoard, Ray metrics, plot
    gold_key = f"rollout/reward/{RewardSourceConfig(cfg.data.gold_reward).label}" if cfg.data.gold_reward else None
    try:
        with rl_system(cfg, force) as system:
            start_step = 0
            if state:
                start_step = restore_run(start, state, system.learner_group, system.prompts,
                                         system.kl_controller, system.weight_sync)
                print(f"rl: resumed from {start} (step {start_step})", flush=True)

            def on_step(step: int, metrics: dict[str, float], rollout) -> None:
                if gold_key in metrics:
                    metrics["rollout/gold"] = metrics[gold_key]
                metrics["step"] = step
                if not history:  # seconds from the stage's start to its first step: Ray, Serve, actors, DeepSpeed
                    metrics |= system.startup | {"time/startup": loop_start - started, "time/startup/ray": ray_seconds}
                history.append(metrics)
                logger.log(step, metrics)
                with paths.rl_consumed.open("a") as f:
                    f.write(json.dumps({"step": step, "prompt_ids": rollout.prompt_ids,
                                        "sample_index": rollout.sample_index}) + "\n")

            def checkpoint(steps_done: int) -> None:
                save_run(checkpoints, steps_done, cfg, system.learner_group, system.prompts, system.kl_controller)

            loop_start = time.perf_counter()
            train_loop(cfg.rl, system.prompts, system.rollout_group, system.learner_group, system.weight_sync,
                       system.kl_controller, on_step, start_step, checkpoint)
            save_policy(system.learner_group, system.policy_path, paths.rl_policy)
            write_lineage(cfg, record, RL.folder)
            print(f"rl: {gold_verdict(history)}", flush=True)
    finally:
        logger.close()
        if owned:
            shutdown_ray(shutdown_serve=local)
    return history
