"""Rollout workers: policy replicas that sample responses and get them scored by the reward sources.

``RolloutWorker`` is a plain class (testable without Ray); ``RolloutGroup`` makes N of them
Ray actors and splits each batch of prompts across them. Scores come from the reward
deployment on Ray Serve (:mod:`mmrlhf.reward.serve_app`), one call per batch through a
``DeploymentHandle`` with the images (uint8, preprocessed in the replica), the responses and
the records' references and prompts, never over HTTP inside the cluster. The references go to
the reward sources only, never into the policy's input.

Faults (Ray docs, "Fault tolerance: actors"): a worker actor that dies is restarted
(``max_restarts``) and the ``generate`` task it was running is retried on the restarted actor
(``max_task_retries``). That is safe because ``generate`` is idempotent: its sampling is seeded
by (run seed, step, worker index), and each call carries the policy version it must use, which a
restarted worker (back at the starting weights) loads before it samples. A reward call that
times out or fails is retried; when every try fails the samples are left unscored (NaN, masked
out by the learner and counted as ``rollout/unscored``), never given a made-up score. A
ValueError raised remotely (a bad record, a failing reward function) is re-raised as itself,
without Ray's wrapper, so it reads as one line that names the cause.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import ray
import torch
from ray import ObjectRef
from ray.exceptions import RayError, RayTaskError

from mmrlhf.config import REWARD_VERSION, TOTAL
from mmrlhf.data.media import MediaLimits
from mmrlhf.data.video import decode_media
from mmrlhf.metrics import record_reward_latency
from mmrlhf.models.policy import check_positions_fit, encode_prompts, generate, load_policy
from mmrlhf.models.sampling import resolve_sampling
from mmrlhf.sync import WeightTransport, bind_state_dict, state_dict_hash
from mmrlhf.types import Rollout

# (images, responses, references, prompts) -> {source label: (B,), "total": (B,), "reward_version": (B,)}
Scorer = Callable[[list[np.ndarray], list[str], list[Any], list[str]], dict[str, np.ndarray]]
MAX_RESTARTS = 3
logger = logging.getLogger(__name__)


class ScoringFailed(RuntimeError):
    """Every try of a reward call failed or timed out; the samples stay unscored."""


@contextlib.contextmanager
def remote_value_errors() -> Iterator[None]:
    """Re-raise a ValueError that a Ray task or Serve replica raised as itself, not wrapped in
    ``RayTaskError`` (whose message is the remote traceback; it stays chained as the cause)."""
    try:
        yield
    except RayTaskError as err:
        if isinstance(err.cause, ValueError):
            raise err.cause from err
        raise


def serve_scorer(app_name: str, deployment_name: str = "RewardDeployment", timeout_s: float = 60.0,
                 retries: int = 3) -> Scorer:
    """A scoring function that calls the reward deployment's ``score(images, texts, references,
    prompts)`` through a handle; it returns the per-source scores and ``total``.

    Each call's seconds, retries included, go to the Ray histogram ``mmrlhf_reward_latency_seconds``.

    Each try waits ``timeout_s`` seconds (then cancels the request); a failed or timed-out try
    is retried ``retries`` times, after 1, 2, 4... seconds (at most ``timeout_s``), which gives
    Serve time to replace an unhealthy replica. A ``ValueError`` (a malformed request, or a
    reward function that fails: the caller's to fix) is raised at once, unwrapped
    (:func:`remote_value_errors`). Raises :class:`ScoringFailed` when every try failed.
    """
    from ray import serve

    handle = serve.get_deployment_handle(deployment_name, app_name=app_name)

    def score(images: list[np.ndarray], texts: list[str], references: list[Any],
              prompts: list[str]) -> dict[str, np.ndarray]:
        errors = []
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(2.0 ** (attempt - 1), timeout_s))
            response = handle.score.remote(images, texts, references, prompts)
            try:
                with remote_value_errors():
                    return response.result(timeout_s=timeout_s)
            except ValueError:
                raise
            except (TimeoutError, RayError) as err:
                response.cancel()
                last_line = (str(err).strip().splitlines() or [""])[-1]
                errors.append(f"try {attempt + 1}: {type(err).__name__}: {last_line}")
                logger.warning("reward call for %d samples failed (%s)", len(texts), errors[-1])
        raise ScoringFailed(f"{app_name}/{deployment_name}: {len(errors)} tries failed: {'; '.join(errors)}")

    return record_reward_latency(score)


class RolloutWorker:
    """One policy replica in inference mode.

    Args:
        policy_path: folder or hub name of the starting policy (``from_pretrained``).
        scorer_factory: builds the scoring function inside the worker's process (a handle to
            the Serve deployment, see :func:`serve_scorer`).
        seed: base seed of this worker's sampling generator.
        temperature, top_p, top_k: sampling settings; None takes the checkpoint's
            ``generation_config`` (:func:`mmrlhf.models.sampling.resolve_sampling`), as the learner does.
        max_new_tokens: response length limit (tokens).
        media: how prompt images and videos are decoded (pixel cap, video frame sampling).
        device: where the policy replica samples ("cuda" when the actor has a GPU); rollouts
            come back on the CPU.
        num_threads: torch intra-op threads of this process (1: one core per worker).
    """

    def __init__(self, policy_path: str, scorer_factory: Callable[[], Scorer], seed: int,
                 temperature: float | None, max_new_tokens: int, media: MediaLimits = MediaLimits(),
                 device: str = "cpu", num_threads: int = 1, top_p: float | None = None,
                 top_k: int | None = None) -> None:
        torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model, self.processor = load_policy(policy_path)
        self.model.to(self.device).eval()
        self.score = scorer_factory()
        self.seed = seed
        self.sampling = resolve_sampling(self.model.generation_config, temperature, top_p, top_k)
        self.max_new_tokens = max_new_tokens
        self.media = media
        self.policy_version = 0

    def load_weights(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Load published policy weights (strict keys/shapes) and take their ``version``.

        The replica only reads its weights, so it uses the published tensors as they are
        (:func:`mmrlhf.sync.bind_state_dict`): read from the object store or from learner rank 0's
        weight slots (:mod:`mmrlhf.weight_slots`) on a CPU worker, they stay in the machine's shared
        memory, one copy for every worker there, and loading copies nothing; on a GPU worker they
        are copied to the device. Raises ValueError when weight slots of another machine reach it
        (a worker restarted elsewhere; slots are used only while every worker shares rank 0's machine).
        """
        bind_state_dict(self.model, state_dict)
        self.policy_version = version
        return version

    def version(self) -> int:
        """The policy version this replica holds."""
        return self.policy_version

    def weights_hash(self) -> str:
        """SHA-256 of this replica's weights (to check weight sync)."""
        return state_dict_hash(self.model.state_dict())

    def restarted(self) -> bool:
        """Whether Ray restarted this actor after it died (False for a plain object)."""
        return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed

    @torch.no_grad()
    def generate(self, records: list[dict[str, Any]], samples_per_prompt: int, step: int,
                 weights: tuple[int, list[ObjectRef]] | None = None) -> Rollout:
        """Sample ``samples_per_prompt`` responses per record and score them with every reward source.

        ``records``: dicts with ``id``, ``image`` (encoded bytes), ``prompt``, optionally ``video`` (encoded bytes) and
        ``reference`` (given to the reward sources only). ``weights``:
        (policy version, [ref to its state dict]) to sample with, loaded first unless this
        replica holds that version already (a restarted worker does not); None keeps the
        current weights. Sampling is seeded by (worker seed, ``step``) so a re-run of a step
        draws the same samples. Rows whose score is not finite, or could not be scored at all
        (:class:`ScoringFailed`), keep ``scores`` NaN (the learner masks them). The rollout's
        ``timings`` hold the seconds spent generating (images decoded, prompts encoded,
        sampling) and scoring.

        Raises:
            mmrlhf.data.media.ImageDecodeError: a prompt image is unreadable (names the record).
            ValueError: a reward source failed on the batch (names it); a record's image + prompt +
                ``max_new_tokens`` exceed the policy's positions (names it, with the counts).
        """
        if weights is not None and weights[0] != self.policy_version:
            self.load_weights(weights[0], ray.get(weights[1][0]))
        start = time.perf_counter()
        rows = [r for r in records for _ in range(samples_per_prompt)]
        decoded = [decode_media(r["image"], r.get("video"), r["id"], self.media) for r in records]
        images = [media for media in decoded for _ in range(samples_per_prompt)]
        # each record decoded and encoded once, its rows repeated: the same left-padded batch as encoding every row
        batch = encode_prompts(self.processor, decoded, [r["prompt"] for r in records]).rows(
            torch.arange(len(records)).repeat_interleave(samples_per_prompt))
        check_positions_fit(self.model, batch, self.max_new_tokens, [r["id"] for r in rows], "rl.max_new_tokens")
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + step)
        out = generate(self.model, self.processor, batch.to(self.device), self.max_new_tokens,
                       generator=generator, **self.sampling.kwargs())
        generated = time.perf_counter()
        source_scores, reward_version = score_rows(self.score, images, out.texts, rows, step)
        scores = source_scores.pop(TOTAL)
        scores[~torch.isfinite(scores)] = float("nan")
        return Rollout(
            prompt_ids=[r["id"] for r in rows],
            sample_index=[i % samples_per_prompt for i in range(len(rows))],
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, vision=batch.vision,
            response_ids=out.response_ids.cpu(), response_mask=out.response_mask.cpu(), logprobs=out.logprobs.cpu(),
            finish_reason=out.finish_reason, texts=out.texts,
            policy_version=torch.full((len(rows),), self.policy_version, dtype=torch.int64),
            scores=scores, source_scores=source_scores, reward_version=reward_version,
            timings={"time/generate": generated - start, "time/score": time.perf_counter() - generated},
        )


def score_rows(score: Scorer, images: list[np.ndarray], texts: list[str], rows: list[dict[str, Any]],
               step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Score B samples: ({source label: (B,), "total": (B,)} float32, reward_version (B,) int64).

    ``rows``: the samples' records (``reference`` optional, ``prompt``). When every try failed
    (:class:`ScoringFailed`) the scores are only a NaN total and the versions -1.
    """
    try:
        scores = dict(score(images, texts, [r.get("reference") for r in rows], [r["prompt"] for r in rows]))
    except ScoringFailed as err:
        logger.warning("step %d: %d samples left unscored: %s", step, len(rows), err)
        return {TOTAL: torch.full((len(rows),), float("nan"))}, torch.full((len(rows),), -1, dtype=torch.int64)
    version = torch.as_tensor(np.asarray(scores.pop(REWARD_VERSION)), dtype=torch.int64)
    return {label: torch.tensor(np.asarray(values), dtype=torch.float32) for label, values in scores.items()}, version


class RolloutGroup:
    """N ``RolloutWorker`` Ray actors; ``generate`` splits the prompts across them.

    Each actor is restarted up to ``MAX_RESTARTS`` times and its ``generate`` task retried as
    often (see the module docstring for why that is safe).

    Args:
        num_workers: N.
        worker_kwargs: keyword arguments of :class:`RolloutWorker` (``seed`` is offset per worker).
        actor_options: Ray options per actor (``num_cpus``, ``num_gpus``, ``resources``).
        pad_token_id: used to re-pad rollouts when joining them.
        transport: where weight sync publishes the policy; each ``generate`` call carries its
            latest version, so a restarted worker loads it first. None: workers keep theirs.
    """

    def __init__(self, num_workers: int, worker_kwargs: dict[str, Any], actor_options: dict[str, Any],
                 pad_token_id: int, transport: WeightTransport | None = None) -> None:
        actor = ray.remote(RolloutWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                                                  **actor_options)
        base_seed = worker_kwargs["seed"]
        self.workers = [actor.remote(**{**worker_kwargs, "seed": base_seed + 7919 * i}) for i in range(num_workers)]
        self.pad_token_id = pad_token_id
        self.transport = transport

    def submit(self, records: list[dict[str, Any]], samples_per_prompt: int, step: int) -> list[ObjectRef]:
        """Start generating for ``records`` (split in worker order); :meth:`collect` joins the parts."""
        weights = None
        if self.transport is not None:
            try:
                version, ref = self.transport.latest()
            except LookupError:  # nothing published yet: every worker holds its starting weights
                pass
            else:
                weights = (version, [ref])  # in a list, so Ray passes the ref instead of fetching it
        chunks = [c.tolist() for c in np.array_split(np.arange(len(records)), len(self.workers)) if len(c)]
        return [w.generate.remote([records[i] for i in c], samples_per_prompt, step, weights)
                for w, c in zip(self.workers, chunks)]

    def collect(self, refs: list[ObjectRef]) -> Rollout:
        """The rollout of a :meth:`submit` call, parts joined in worker order; each phase's
        seconds are the slowest worker's (the phase's wall time).

        Raises:
            ValueError: a worker's records or reward sources failed (the worker's error itself).
        """
        with remote_value_errors():
            parts = ray.get(refs)
        return Rollout.concat(parts, self.pad_token_id, parallel=True)

    def generate(self, records: list[dict[str, Any]], samples_per_prompt: int, step: int) -> Rollout:
        """Scored rollout for ``records`` (``len(records) * samples_per_prompt`` rows, prompt order kept)."""
        return self.collect(self.submit(records, samples_per_prompt, step))

    def weights_hashes(self) -> list[str]:
        """Each worker's weight hash, in worker order."""
        return ray.get([w.weights_hash.remote() for w in self.workers])

    def versions(self) -> list[int]:
        """Each worker's policy version, in worker order."""
        return ray.get([w.version.remote() for w in self.workers])

    def shutdown(self) -> None:
        """Kill the worker actors."""
        for w in self.workers:
            ray.kill(w)
        self.workers = []
