"""Typed configuration for a whole run, in three layers.

defaults (the dataclasses below) ← ``--config jobs/<x>.yaml`` ← ``key=value`` overrides.

Merging and type checks follow OmegaConf structured configs (``OmegaConf.structured``,
``OmegaConf.merge``, ``OmegaConf.from_dotlist``); value checks live in each dataclass's
``__post_init__``. Every failure becomes one :class:`ConfigError` line that names the key and
what is allowed. Each stage receives only its own sub-config.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mmrlhf.data.media import MediaLimits


RAY_PREDEFINED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
# "gae" (PPO's value model) and the critic-free estimators of mmrlhf.algorithms.estimators (a test
# keeps the two lists equal; named here so loading a config does not import torch)
ADVANTAGE_ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
MODEL_SOURCE = "model"  # the run's learned reward model, <run_dir>/reward/model
CLIPSCORE_SOURCE = "clipscore"  # zero-shot CLIPScore from that model's joint embedding, without its head
WEIGHTS_SOURCES = (MODEL_SOURCE, CLIPSCORE_SOURCE)  # the sources that load <run_dir>/reward/model
TOTAL = "total"  # the key of the weighted sum among the per-source scores
REWARD_VERSION = "reward_version"  # the key of the scoring weights' version per item in a Serve reply
FUNCTION_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")  # package.module:function


class ConfigError(ValueError):
    """A malformed configuration: unknown key, wrong type or value out of range (one line)."""


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {allowed}")


def _choice(key: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, key, "one of " + ", ".join(map(str, allowed)), value)


def _positive(key: str, value: float, zero_ok: bool = False) -> None:
    _check(math.isfinite(value) and (value >= 0 if zero_ok else value > 0), key,
           "a finite number >= 0" if zero_ok else "a finite number > 0", value)


def check_sampling(prefix: str, temperature: Optional[float], top_p: Optional[float], top_k: Optional[int]) -> None:
    """Sampling settings in range, or null (the checkpoint's ``generation_config``). ``prefix``:
    of the keys, e.g. ``"rl."``."""
    if temperature is not None:
        _positive(f"{prefix}temperature", temperature)
    if top_p is not None:
        _check(0 < top_p <= 1, f"{prefix}top_p", "a number in (0, 1] (1: off), or null", top_p)
    if top_k is not None:
        _check(top_k >= 0, f"{prefix}top_k", "an integer >= 0 (0: off), or null", top_k)


@dataclass
class DataConfig:
    """Where records come from: the embedded digits task or a user's manifest.

    ``source="digits"`` builds the default from scikit-learn's scans; ``"manifest"``,
    ``"coco"`` and ``"llava"`` read a user's files (``path``; ``image_dir`` for COCO/LLaVA).
    ``max_image_pixels`` is the decompression-bomb cap (pixels); image URLs are refused unless
    ``allow_urls``. ``n_sft`` … ``n_test`` and the digit settings apply to the digits tasks only;
    ``source="digits_video"`` builds the video task (:mod:`mmrlhf.data.digits_video`: clips of
    digits one after another, "Summarize the video.").
    Videos are decoded at ``video_fps`` frames per second of video time, then thinned or
    repeated evenly to ``video_min_frames`` … ``video_max_frames`` frames (:mod:`mmrlhf.data.video`);
    ``max_image_pixels`` caps each frame.
    """

    source: str = "digits"
    path: Optional[str] = None
    image_dir: Optional[str] = None
    seed: int = 0
    canvas: int = 64
    min_digits: int = 3
    max_digits: int = 5
    n_sft: int = 900
    n_feedback: int = 2000
    n_val: int = 300
    n_test: int = 500
    max_image_pixels: int = 16_000_000
    allow_urls: bool = False
    video_fps: float = 2.0
    video_min_frames: int = 2
    video_max_frames: int = 16

    def __post_init__(self) -> None:
        _choice("data.source", self.source, ("digits", "digits_video", "manifest", "coco", "llava"))
        _check(self.builtin or bool(self.path), "data.path",
               f"the data file to read with data.source={self.source}", self.path)
        _check(self.source not in ("coco", "llava") or bool(self.image_dir), "data.image_dir",
               f"the folder of the images that data.source={self.source} names", self.image_dir)
        _check(1 <= self.min_digits <= self.max_digits, "data.min_digits",
               f"1 <= min_digits <= max_digits ({self.max_digits})", self.min_digits)
        for name in ("n_sft", "n_feedback", "n_val", "n_test", "max_image_pixels", "canvas", "video_fps",
                     "video_min_frames"):
            _positive(f"data.{name}", getattr(self, name))
        _check(self.video_min_frames <= self.video_max_frames, "data.video_max_frames",
               f"an integer >= data.video_min_frames ({self.video_min_frames})", self.video_max_frames)
        # each digit keeps at least its scanned 8 px (mmrlhf.data.digits.DigitsSpec)
        _check(self.source != "digits" or self.canvas >= 8 * self.max_digits, "data.canvas",
               f"an integer >= 8 * data.max_digits ({8 * self.max_digits})", self.canvas)

    @property
    def builtin(self) -> bool:
        """Whether the records are built here (the digits tasks) rather than read from ``path``."""
        return self.source in ("digits", "digits_video")

    @property
    def media(self) -> MediaLimits:
        """How stored images and videos are decoded (pixel cap, video frame sampling)."""
        return MediaLimits(self.max_image_pixels, self.video_fps, self.video_min_frames, self.video_max_frames)

    @property
    def gold_reward(self) -> Optional[str]:
        """Import path of the task's gold score as a reward function, or None: only the digits
        tasks have one (:func:`mmrlhf.data.digits.gold_reward`, for images and clips). The RL stage adds it to the
        reward sources (weight 0, for the ``rollout/gold`` metric) unless they list it."""
        return "mmrlhf.data.digits:gold_reward" if self.builtin else None

    @property
    def has_gold_score(self) -> bool:
        """Whether responses can be scored against an oracle (see :attr:`gold_reward`), so the
        run gets the ``gold`` metrics and the simulated annotator; other data gets human
        preferences (``mmrlhf feedback import``)."""
        return self.gold_reward is not None


@dataclass
class ModelConfig:
    """Which models to load: a preset name (``tiny``, ``small``) or a checkpoint name/path.

    ``policy`` goes through ``AutoModelForImageTextToText.from_pretrained``; ``reward`` through
    ``open_clip.create_model_and_transforms`` with ``reward_pretrained`` as the tag.
    """

    policy: str = "small"
    reward: str = "small"
    reward_pretrained: Optional[str] = None

    def __post_init__(self) -> None:
        if self.reward_pretrained is not None and "/" not in self.reward_pretrained:  # a path: weights file
            # A typo in a tag would otherwise surface as a failed download on the cluster, hours in.
            import open_clip

            known = open_clip.list_pretrained()
            _check((self.reward, self.reward_pretrained) in known, "model.reward_pretrained",
                   f"a tag open_clip knows for {self.reward!r}: "
                   + (", ".join(t for m, t in known if m == self.reward) or "none (not an open_clip model name)"),
                   self.reward_pretrained)


@dataclass
class SFTConfig:
    """Supervised fine-tuning: ``epochs`` over the labeled pool, AdamW at peak ``lr`` with a
    linear warmup over ``warmup_ratio`` of the steps, cosine decay, and clipping at ``grad_clip``.
    ``vision_warmup_epochs`` of bag-of-words pretraining of the vision tower come first (0 skips)."""

    vision_warmup_epochs: int = 10
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr", "max_new_tokens", "grad_clip"):
            _positive(f"sft.{name}", getattr(self, name))
        _positive("sft.vision_warmup_epochs", self.vision_warmup_epochs, zero_ok=True)
        _check(0 <= self.warmup_ratio < 1, "sft.warmup_ratio", "a number in [0, 1)", self.warmup_ratio)


@dataclass
class FeedbackConfig:
    """Simulated annotator (Christiano et al. 2017): K samples a prompt, Bradley–Terry choices.

    ``bt_temperature`` scales the gold-score gap before the logistic choice; 0 means the
    annotator always prefers the higher gold score (ties are dropped). The policy's samples are
    drawn at ``sample_temperature``, ``sample_top_p``, ``sample_top_k``
    (:mod:`mmrlhf.models.sampling`); null takes the checkpoint's ``generation_config``, else off.
    """

    n_prompts: int = 2000
    samples_per_prompt: int = 4
    sample_temperature: Optional[float] = 1.0
    sample_top_p: Optional[float] = None
    sample_top_k: Optional[int] = None
    bt_temperature: float = 0.05
    annotator: str = "simulated-gold"

    def __post_init__(self) -> None:
        _positive("feedback.n_prompts", self.n_prompts)
        _check(self.samples_per_prompt >= 2, "feedback.samples_per_prompt", "an integer >= 2", self.samples_per_prompt)
        check_sampling("feedback.sample_", self.sample_temperature, self.sample_top_p, self.sample_top_k)
        _positive("feedback.bt_temperature", self.bt_temperature, zero_ok=True)


@dataclass
class RewardSourceConfig:
    """One reward source (:mod:`mmrlhf.reward.sources`) and its weight in the total reward.

    ``name``: ``"model"`` (the run's learned reward model), ``"clipscore"`` (CLIPScore, Hessel
    et al. 2021: 2.5 * max(cos, 0) of that model's joint embedding, no learned head) or a rule
    function by import path, ``"package.module:function"``. ``weight``: its factor in the sum; 0 computes and logs the
    source without training on it.
    """

    name: str = MODEL_SOURCE
    weight: float = 1.0

    @property
    def label(self) -> str:
        """Short metric-safe name (``rollout/reward/<label>``): ``model``, ``clipscore`` or the function's name."""
        return self.name.rsplit(":", 1)[-1]


def check_reward_sources(sources: list[RewardSourceConfig], key: str = "reward.sources") -> None:
    """Raise a one-line :class:`ConfigError` naming ``<key>[i].name`` or ``.weight`` unless
    ``sources`` is a non-empty list of well-formed names (``model``, ``clipscore`` or ``a.b:c``) with distinct
    labels and finite weights, not all zero."""
    _check(len(sources) > 0, key, "a non-empty list of {name, weight}, e.g. [{name: model, weight: 1.0}]", sources)
    seen: dict[str, int] = {}
    for i, source in enumerate(sources):
        _check(source.name in WEIGHTS_SOURCES or bool(FUNCTION_PATH.fullmatch(source.name)), f"{key}[{i}].name",
               f"{MODEL_SOURCE!r}, {CLIPSCORE_SOURCE!r} or a function by import path 'package.module:function'",
               source.name)
        _check(math.isfinite(source.weight), f"{key}[{i}].weight", "a finite number", source.weight)
        _check(source.label not in (TOTAL, REWARD_VERSION), f"{key}[{i}].name",
               f"a function not named {TOTAL!r} or {REWARD_VERSION!r} (keys of the reward reply)", source.name)
        j = seen.setdefault(source.label, i)
        _check(j == i, f"{key}[{i}].name", f"a source whose label {source.label!r} differs from that of "
               f"{key}[{j}] ({sources[j].name!r})", source.name)
    _check(any(source.weight != 0 for source in sources), f"{key}[*].weight",
           "at least one non-zero weight among the sources", [source.weight for source in sources])


def uses_model(sources: list[RewardSourceConfig]) -> bool:
    """Whether one of ``sources`` needs the run's reward model (``model`` or ``clipscore``)."""
    return any(source.name in WEIGHTS_SOURCES for source in sources)


@dataclass
class RewardConfig:
    """Reward model: contrastive warm start, Bradley–Terry training, Serve deployment.

    ``clip_epochs`` of CLIP contrastive training on the labeled records come first (0 skips), at
    ``clip_lr``, each image also against ``hard_negatives`` one-edit corruptions of its reference
    and moved by up to ``clip_shift_px`` pixels. In Bradley–Terry training ``batch_size`` counts
    prompts (each batch holds all their pairs, so each image is encoded once).

    ``val_fraction`` of the prompts (not pairs, so no prompt leaks) is held out for pairwise
    accuracy. ``max_batch_size``/``batch_wait_timeout_s`` configure ``@serve.batch``;
    ``min_replicas``/``max_replicas`` the Serve autoscaling config. ``http`` turns on the HTTP
    route (off by default). Serve probes each replica's health every ``health_check_period_s``
    and replaces one whose check fails or takes over ``health_check_timeout_s``; a rollout
    worker waits ``score_timeout_s`` for a score call and retries it ``score_retries`` times
    before it drops the samples (counted, never scored).

    ``sources``: what the RL stage's reward is, a weighted sum of the learned model and/or rule
    functions (:class:`RewardSourceConfig`; default: the learned model alone).
    """

    sources: list[RewardSourceConfig] = field(default_factory=lambda: [RewardSourceConfig()])
    clip_epochs: int = 60
    clip_lr: float = 5e-4
    hard_negatives: int = 4
    clip_shift_px: int = 4
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-5
    val_fraction: float = 0.2
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 16.0
    http: bool = False
    http_port: int = 8000
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    score_timeout_s: float = 60.0
    score_retries: int = 3

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr", "clip_lr", "max_batch_size", "target_ongoing_requests",
                     "health_check_period_s", "health_check_timeout_s", "score_timeout_s"):
            _positive(f"reward.{name}", getattr(self, name))
        _positive("reward.hard_negatives", self.hard_negatives, zero_ok=True)
        _positive("reward.clip_shift_px", self.clip_shift_px, zero_ok=True)
        _positive("reward.score_retries", self.score_retries, zero_ok=True)
        _check(0 < self.val_fraction < 1, "reward.val_fraction", "a number in (0, 1)", self.val_fraction)
        _check(1 <= self.min_replicas <= self.max_replicas, "reward.min_replicas",
               f"1 <= min_replicas <= max_replicas ({self.max_replicas})", self.min_replicas)
        check_reward_sources(self.sources)


@dataclass
class RLConfig:
    """The actor-learner loop: PPO or SAC (``algorithm``) with a KL leash to the reference policy.

    Per step: ``prompts_per_step`` prompts × ``samples_per_prompt`` samples from
    ``rollout_workers`` workers, then, on a ``learner_ranks``-rank DeepSpeed
    ZeRO-``zero_stage`` learner group, either ``ppo_epochs`` PPO passes over minibatches of
    ``minibatch_size`` (KL penalty ``kl_coef`` per token), or ``sac_updates_per_step``
    token-level discrete SAC steps on ``minibatch_size`` rows drawn from a replay buffer of
    ``replay_capacity`` rows (all ranks), with ``kl_coef`` as the KL weight α of the soft value,
    ``vf_coef`` weighting the twin-Q loss and target Q heads Polyak-averaged at rate ``sac_tau``
    (see :mod:`mmrlhf.algorithms.sac`). A rollout with a row generated more than
    ``max_policy_lag`` policy versions before the learner's is refused.

    ``asynchronous``: the rollout workers generate the next batch while the learner group
    updates on this one (one-step overlap, so its rows are one policy version behind; needs
    ``max_policy_lag`` >= 1). PPO corrects that drift with truncated importance weights
    ``min(π_old / π_behaviour, tis_cap)`` per token (see :func:`mmrlhf.algorithms.ppo.policy_loss`);
    SAC is off-policy and needs none. The overlap pauses at each checkpoint, so a resumed run
    repeats the uninterrupted one exactly.

    ``freeze_vision_tower`` keeps the policy's vision tower fixed at its SFT weights (the
    projector, LM and value head train), as LLaVA-RLHF (Sun et al. 2023) does.
    ``score_normalization`` of the reward-model scores before the update: ``"group"`` subtracts the
    mean of the prompt's samples and divides by their std (GRPO's group baseline, Shao et al.
    2024), ``"batch"`` whitens over the step's samples, ``"none"`` keeps the raw scores.
    ``advantage_estimator`` (PPO only; SAC ignores it): ``"gae"`` uses the value model; ``"grpo"``, ``"dr_grpo"``,
    ``"rloo"`` and ``"reinforce_pp"`` are critic-free (:mod:`mmrlhf.algorithms.estimators`): no
    value head, advantages from the raw scores of each prompt's samples (``score_normalization``
    does not apply), and the KL leash is a loss term ``kl_coef * k3(π‖π_ref)`` per token (GRPO,
    Shao et al. 2024, eq. 3) instead of a reward penalty. ``clip_eps_high`` clips the ratio from
    above at ``1 + clip_eps_high`` (DAPO's clip-higher; None: ``clip_eps``). ``dynamic_sampling``
    (DAPO, Yu et al. 2025) drops the prompts whose samples all scored alike and generates up to
    ``dynamic_sampling_tries`` more batches of prompts to refill the step.
    A checkpoint is written every ``checkpoint_every`` steps (0: only after the last step) and
    the newest ``keep_checkpoints`` are kept (see :mod:`mmrlhf.checkpoint`).
    Rollouts sample at ``temperature``, ``top_p``, ``top_k`` (:mod:`mmrlhf.models.sampling`; null
    takes the checkpoint's ``generation_config``, else off) and the learner scores under the same
    distribution, so PPO's ratio is between the truncated policies.
    """

    algorithm: str = "sac"
    steps: int = 40
    prompts_per_step: int = 32
    samples_per_prompt: int = 4
    rollout_workers: int = 2
    learner_ranks: int = 2
    zero_stage: int = 2
    ppo_epochs: int = 2
    minibatch_size: int = 64
    lr: float = 1e-4
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    kl_coef: float = 0.1
    kl_estimator: str = "k3"
    kl_target: Optional[float] = None
    gamma: float = 1.0
    lam: float = 0.95
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_new_tokens: int = 8
    grad_clip: float = 1.0
    max_policy_lag: int = 0
    asynchronous: bool = False
    tis_cap: float = 2.0
    freeze_vision_tower: bool = True
    score_normalization: str = "group"
    advantage_estimator: str = "gae"
    clip_eps_high: Optional[float] = None
    dynamic_sampling: bool = False
    dynamic_sampling_tries: int = 3
    sac_tau: float = 0.05
    sac_updates_per_step: int = 4
    replay_capacity: int = 1024
    checkpoint_every: int = 5
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        _choice("rl.algorithm", self.algorithm, ("ppo", "sac"))
        _choice("rl.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _choice("rl.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        _choice("rl.score_normalization", self.score_normalization, ("none", "batch", "group"))
        _choice("rl.advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        _check(self.clip_eps_high is None or (math.isfinite(self.clip_eps_high) and self.clip_eps_high > 0),
               "rl.clip_eps_high", "a finite number > 0, or null for rl.clip_eps", self.clip_eps_high)
        _positive("rl.dynamic_sampling_tries", self.dynamic_sampling_tries, zero_ok=True)
        for name in ("steps", "prompts_per_step", "rollout_workers", "learner_ranks", "ppo_epochs",
                     "minibatch_size", "lr", "max_new_tokens", "sac_updates_per_step",
                     "replay_capacity"):
            _positive(f"rl.{name}", getattr(self, name))
        check_sampling("rl.", self.temperature, self.top_p, self.top_k)
        _check(self.samples_per_prompt >= 1, "rl.samples_per_prompt", "an integer >= 1", self.samples_per_prompt)
        _positive("rl.checkpoint_every", self.checkpoint_every, zero_ok=True)
        _check(self.keep_checkpoints >= 1, "rl.keep_checkpoints", "an integer >= 1", self.keep_checkpoints)
        _check(0 <= self.lam <= 1, "rl.lam", "a number in [0, 1]", self.lam)
        _check(0 <= self.gamma <= 1, "rl.gamma", "a number in [0, 1]", self.gamma)
        _check(0 <= self.sac_tau <= 1, "rl.sac_tau", "a number in [0, 1]", self.sac_tau)
        _check(self.max_policy_lag >= (1 if self.asynchronous else 0), "rl.max_policy_lag",
               "an integer >= 1 with rl.asynchronous (the overlapped batch is one version behind)"
               if self.asynchronous else "an integer >= 0", self.max_policy_lag)
        _check(self.tis_cap >= 1, "rl.tis_cap", "a number >= 1", self.tis_cap)
        for name in ("clip_eps", "value_clip_eps", "grad_clip"):
            _positive(f"rl.{name}", getattr(self, name))
        for name in ("kl_coef", "vf_coef", "ent_coef"):
            _positive(f"rl.{name}", getattr(self, name), zero_ok=True)


    @property
    def critic_free(self) -> bool:
        """PPO with a critic-free advantage estimator: no value head, no GAE."""
        return self.algorithm == "ppo" and self.advantage_estimator != "gae"


@dataclass
class ResourcesConfig:
    """Ray resources per actor kind (CPUs, GPUs); ``*_resource`` names a custom resource that one
    node type advertises, so each kind of actor is placed on its node type (see ``cluster/``)."""

    rollout_cpus: float = 1.0
    rollout_gpus: float = 0.0
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    reward_cpus: float = 1.0
    reward_gpus: float = 0.0
    rollout_resource: Optional[str] = None
    learner_resource: Optional[str] = None
    reward_resource: Optional[str] = None
    num_cpus: Optional[int] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                _positive(f"resources.{f.name}", value, zero_ok=True)
            if f.name.endswith("_resource") and value is not None:
                # Ray refuses its predefined resources in a `resources` dict (num_cpus/num_gpus are for those).
                _check(bool(value) and value not in RAY_PREDEFINED_RESOURCES, f"resources.{f.name}",
                       "a custom resource name that a node type advertises, not one of "
                       + ", ".join(RAY_PREDEFINED_RESOURCES), value)


@dataclass
class EvalConfig:
    """Held-out evaluation on ``split``; ``n_review`` samples kept for people.

    Greedy decoding unless ``do_sample``: then one sample per prompt at ``temperature``,
    ``top_p``, ``top_k`` (each None: the checkpoint's ``generation_config``, else off), drawn from
    a generator seeded with the run's ``seed``, so an eval is repeatable.
    """

    split: str = "test"
    batch_size: int = 64
    max_new_tokens: int = 8
    n_review: int = 50
    do_sample: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None

    def __post_init__(self) -> None:
        _choice("eval.split", self.split, ("val", "test"))
        _positive("eval.batch_size", self.batch_size)
        _positive("eval.max_new_tokens", self.max_new_tokens)
        _positive("eval.n_review", self.n_review, zero_ok=True)
        check_sampling("eval.", self.temperature, self.top_p, self.top_k)


@dataclass
class RunConfig:
    """A whole run. ``run_dir`` holds every stage's outputs; ``seed`` seeds everything."""

    run_dir: str = "runs/digits"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_path(self) -> Path:
        """The run directory as a ``Path``."""
        return Path(self.run_dir)


def _allowed_keys(full_key: str, schema: type | None = None) -> list[str]:
    node: Any = schema or RunConfig
    for part in full_key.split(".")[:-1]:
        hints = {f.name: f for f in dataclasses.fields(node)}
        if part not in hints:
            return []
        node = hints[part].default_factory  # type: ignore[assignment]
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


# OmegaConf reports a key inside a list item without the list's key; the items' types say where.
LIST_ITEMS = {RewardSourceConfig: "reward.sources[]"}


def _one_line(exc: OmegaConfBaseException, schema: type | None = None) -> str:
    key = getattr(exc, "full_key", None) or "config"
    item_type = getattr(exc, "object_type", None)
    if item_type in LIST_ITEMS and "." not in key:
        key = f"{LIST_ITEMS[item_type]}.{key}"
    msg = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        allowed = [f.name for f in dataclasses.fields(item_type)] if item_type in LIST_ITEMS else _allowed_keys(key, schema)
        if allowed:
            msg = f"unknown key; allowed here: {', '.join(allowed)}"
    return f"{key}: {msg}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, schema: type | None = None) -> Any:
    """Build a :class:`RunConfig` from defaults ← YAML file ← ``key=value`` overrides.

    ``overrides`` use dotted keys (``rl.steps=4``, ``model.policy=tiny``). ``schema``: another
    top-level config dataclass built the same way (e.g. ``mmrlhf.agents.config.AgentConfig``);
    default :class:`RunConfig`.

    Raises:
        ConfigError: unknown key, wrong type, value out of range, malformed override or YAML.
        FileNotFoundError: ``path`` does not exist.
    """
    schema = schema or RunConfig
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as exc:  # yaml.YAMLError and friends: re-raised as one line
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(layers[-1], DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (run_dir, data, rl, ...), "
                              f"got a {type(layers[-1]).__name__}")
    sections = [f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)]
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. rl.steps=4")
        if item.split("=", 1)[0] in sections:
            raise ConfigError(f"override {item!r}: {item.split('=', 1)[0]} is a section; set one of its keys, "
                              f"e.g. {item.split('=', 1)[0]}.<key>=value")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        merged = OmegaConf.merge(base, *layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, schema)) from exc


def to_dict(cfg: Any) -> dict:
    """A plain ``dict`` of a config dataclass (for logging and run directories)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the resolved config of a run, for reproducibility)."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def section_keys(section: str) -> list[tuple[str, str, Any]]:
    """``(dotted key, type, default)`` of every field of a :class:`RunConfig` section (or a top-level key).

    Generated from the dataclasses, so ``--help`` and the config never disagree.

    Raises:
        KeyError: ``section`` is not a field of :class:`RunConfig`.
    """
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    f = top[section]
    if not dataclasses.is_dataclass(f.default_factory):
        return [(f.name, str(f.type), f.default)]
    return [(f"{section}.{g.name}", str(g.type),
             g.default if g.default is not dataclasses.MISSING else g.default_factory())  # type: ignore[misc]
            for g in dataclasses.fields(f.default_factory)]


def keys_help(sections: list[str]) -> str:
    """The lines ``  key (type, default value)`` of the given sections, for a command's ``--help``."""
    lines = []
    for section in sections:
        keys = section_keys(section)
        if keys[0][0] != section:  # a section's keys under its name; a top-level key alone
            lines.append(f"{section}:")
        lines += [f"  {key} ({type_}, default {default!r})" for key, type_, default in keys]
    return "\n".join(lines)
