"""Rollout workers: policy replicas that sample responses and get them scored by the reward model.

``RolloutWorker`` is a plain class (testable without Ray); ``RolloutGroup`` makes N of them
Ray actors (``max_restarts`` set) and splits each batch of prompts across them. Scores come
from the reward model's Ray Serve deployment through a ``DeploymentHandle`` (uint8 images in,
preprocessing in the replica), never over HTTP inside the cluster.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import ray
import torch

from mmrlhf.data.media import decode_image
from mmrlhf.metrics import record_reward_latency
from mmrlhf.models.policy import encode_prompts, generate, load_policy
from mmrlhf.sync import load_state_dict_strict, state_dict_hash
from mmrlhf.types import Rollout

Scorer = Callable[[list[np.ndarray], list[str]], list[float]]


def serve_scorer(app_name: str, deployment_name: str = "RewardDeployment") -> Scorer:
    """A scoring function that calls the reward deployment's ``score`` through a handle; each call's
    seconds go to the Ray histogram ``mmrlhf_reward_latency_seconds``."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment_name, app_name=app_name)
    return record_reward_latency(lambda images, texts: handle.score.remote(images, texts).result())


class RolloutWorker:
    """One policy replica in inference mode.

    Args:
        policy_path: folder or hub name of the starting policy (``from_pretrained``).
        scorer_factory: builds the scoring function inside the worker's process (a handle to
            the Serve deployment, see :func:`serve_scorer`).
        seed: base seed of this worker's sampling generator.
        temperature, max_new_tokens: sampling settings (tokens).
        max_image_pixels: decompression-bomb cap for prompt images (pixels).
    """

    def __init__(self, policy_path: str, scorer_factory: Callable[[], Scorer], seed: int,
                 temperature: float, max_new_tokens: int, max_image_pixels: int) -> None:
        torch.set_num_threads(1)
        self.model, self.processor = load_policy(policy_path)
        self.model.eval()
        self.score = scorer_factory()
        self.seed = seed
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.max_image_pixels = max_image_pixels
        self.policy_version = 0

    def load_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        """Load published policy weights (strict keys/shapes) and take their ``version``."""
        load_state_dict_strict(self.model, state_dict)
        self.policy_version = version
        return version

    def version(self) -> int:
        """The policy version this replica holds."""
        return self.policy_version

    def weights_hash(self) -> str:
        """SHA-256 of this replica's weights (to check weight sync)."""
        return state_dict_hash(self.model.state_dict())

    @torch.no_grad()
    def generate(self, records: list[dict[str, Any]], samples_per_prompt: int, step: int) -> Rollout:
        """Sample ``samples_per_prompt`` responses per record and score them.

        ``records``: dicts with ``id``, ``image`` (encoded bytes) and ``prompt``. Sampling is
        seeded by (worker seed, ``step``) so a re-run of a step draws the same samples.
        Rows whose score is not finite keep ``scores`` NaN (the learner masks them).

        Raises:
            mmrlhf.data.media.ImageDecodeError: a prompt image is unreadable (names the record).
        """
        rows = [r for r in records for _ in range(samples_per_prompt)]
        images = [decode_image(r["image"], r["id"], self.max_image_pixels) for r in rows]
        batch = encode_prompts(self.processor, images, [r["prompt"] for r in rows])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        out = generate(self.model, self.processor, batch, self.max_new_tokens,
                       temperature=self.temperature, generator=generator)
        scores = torch.tensor(self.score(images, out.texts), dtype=torch.float32)
        scores[~torch.isfinite(scores)] = float("nan")
        return Rollout(
            prompt_ids=[r["id"] for r in rows],
            sample_index=[i % samples_per_prompt for i in range(len(rows))],
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
            response_ids=out.response_ids, response_mask=out.response_mask, logprobs=out.logprobs,
            finish_reason=out.finish_reason, texts=out.texts,
            policy_version=torch.full((len(rows),), self.policy_version, dtype=torch.int64),
            scores=scores,
        )


class RolloutGroup:
    """N ``RolloutWorker`` Ray actors; ``generate`` splits the prompts across them.

    Args:
        num_workers: N.
        worker_kwargs: keyword arguments of :class:`RolloutWorker` (``seed`` is offset per worker).
        actor_options: Ray options per actor (``num_cpus``, ``num_gpus``, ``resources``).
        pad_token_id: used to re-pad rollouts when joining them.
    """

    def __init__(self, num_workers: int, worker_kwargs: dict[str, Any], actor_options: dict[str, Any],
                 pad_token_id: int) -> None:
        actor = ray.remote(RolloutWorker).options(max_restarts=3, max_task_retries=0, **actor_options)
        base_seed = worker_kwargs["seed"]
        self.workers = [actor.remote(**{**worker_kwargs, "seed": base_seed + 7919 * i}) for i in range(num_workers)]
        self.pad_token_id = pad_token_id

    def generate(self, records: list[dict[str, Any]], samples_per_prompt: int, step: int) -> Rollout:
        """Scored rollout for ``records`` (``len(records) * samples_per_prompt`` rows, prompt order kept)."""
        chunks = [c.tolist() for c in np.array_split(np.arange(len(records)), len(self.workers)) if len(c)]
        refs = [w.generate.remote([records[i] for i in c], samples_per_prompt, step)
                for w, c in zip(self.workers, chunks)]
        return Rollout.concat(ray.get(refs), self.pad_token_id)

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
