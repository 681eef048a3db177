"""The reward sources on Ray Serve: a thin deployment around `RewardSources` (`sources.py`).

One class, `RewardDeployment` (Ray Serve docs: "Dynamic Request Batching", "In-place updates
through user_config", "Custom health checks", "FastAPI HTTP deployments"):
- it scores every item with every source of `reward.sources`: the learned reward model (a
  scorer, `RewardScorer` by default), CLIPScore from the same scorer's joint embedding, and/or
  rule functions by import path, which each replica
  imports when it starts (a bad one fails the deployment; `build_reward_app` checks them first);
- rollout workers call `handle.score.remote(images, texts, references, prompts)` through a
  `DeploymentHandle` and get {source label: float32 (B,), "total": float32 (B,),
  "reward_version": int64 (B,)}, the last the weights version that scored each item; each item
  goes separately into the `@serve.batch` queue, so concurrent callers share batches;
- the learned model's weights come from `user_config` ({"weights_dir": ..., "version": ...})
  through `reconfigure`, which swaps them in place (`load_weights`) between batches.
  Updated declaratively (`serve deploy` config, KubeRay RayService, Serve REST API), a new
  user_config alone reaches the live replicas' `reconfigure`. Redeployed from Python
  (`deploy_reward`, i.e. `serve.run`), Serve would give the deployment a new random code version
  each time and replace its replicas; `build_reward_app` pins the code version to a hash of what
  the replicas are built from (`code_version`), so a redeploy that changes only the user_config
  is the same in-place update (checked with Ray 2.60), and one that changes the sources or batch
  limits still replaces the replicas (rolling update);
- `check_health` scores a fixed image with the learned model (when it is a source) and fails on
  a missing scorer or a non-finite score; Serve calls it every `health_check_period_s` and
  replaces a replica whose check raises or takes longer than `health_check_timeout_s` (Serve
  docs, "Custom health checks");
- `inject_fault` makes a replica fail or hang on purpose, so tests can watch Serve replace it;
- POST `/score` takes {"items": [{"image_png_base64", "text", "reference"?, "prompt"?}]} and
  returns {"scores" (the totals, null where unscored), "version"}, for clients outside the
  cluster. The HTTP route is off by default (`deploy_reward(route_prefix=None)` runs Serve
  without any HTTP proxy): Serve's proxy does not check Ray's auth token, so anything that can
  reach the port can use the model.
"""

# No `from __future__ import annotations` here: FastAPI reads the route's parameter types at
# runtime, and Serve's class-based view can't resolve them from strings (the body model would
# silently become a required query parameter).
import asyncio
import base64
import binascii
import hashlib
import io
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from fastapi import FastAPI, HTTPException
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from ray import cloudpickle, serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from mmrlhf.config import CLIPSCORE_SOURCE, MODEL_SOURCE, REWARD_VERSION, TOTAL, RewardSourceConfig, uses_model
from mmrlhf.reward.sources import RewardSources, Scorer, check_batch, load_rule_functions

FAULTS = ("none", "fail", "hang")
MAX_ITEMS_PER_REQUEST = 256
# Requests a replica accepts at once, at least. Requests above the limit wait in Serve's router,
# which retries them with a backoff: at 2 x max_batch_size, a batch-1 replica took 2 of 64
# concurrent one-item callers and the rest waited there (benchmarks/reward_serving.py). A replica
# queues what it accepted in its @serve.batch queue, so accepting more costs no more than waiting.
MIN_ONGOING_REQUESTS = 64
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded width x height; larger images are refused, not resized
HEALTH_IMAGE = np.full((8, 8), 128, dtype=np.uint8)  # (H, W) mid-grey
HEALTH_TEXT = "health check"


ScorerFactory = Callable[[dict], Scorer]
Item = tuple[np.ndarray, str, Optional[str], str]  # (image, response, reference, prompt)


def default_scorer_factory(user_config: dict) -> Scorer:
    """`RewardScorer.from_pretrained(user_config["weights_dir"], device=...)`.

    The device is user_config["device"], default "cpu"; read once, when the replica builds its
    scorer.
    """
    # Imported here so the module (and its tests) don't need open_clip; replicas do.
    from mmrlhf.reward.scorer import RewardScorer

    device = user_config.get("device", "cpu")
    return RewardScorer.from_pretrained(user_config["weights_dir"], device=device)


def check_scorer_health(scorer: Scorer | None) -> None:
    """Raise RuntimeError when there is no scorer, or its score of a fixed grey image isn't
    one finite float."""
    if scorer is None:
        raise RuntimeError(
            "RewardDeployment: no scorer loaded; deploy with user_config={'weights_dir': ...}"
        )
    scores = np.asarray(scorer.score([HEALTH_IMAGE], [HEALTH_TEXT]))
    if scores.shape != (1,) or not np.isfinite(scores).all():
        raise RuntimeError(
            f"RewardDeployment: self-test score is {scores!r}, expected one finite float"
        )


def decode_image(image_base64: str, where: str) -> np.ndarray:
    """Base64 image bytes (PNG, or any format Pillow reads) -> uint8 (H, W) or (H, W, 3).

    Black-and-white and 8-bit grey images stay (H, W); every other mode becomes RGB (H, W, 3).
    where: names the item in error messages, e.g. "items[3]".
    Raises ValueError naming `where` for bad base64, bytes that aren't an image, a truncated
    image, or one above MAX_IMAGE_PIXELS (checked before decoding the pixels).
    """
    try:
        raw = base64.b64decode(image_base64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{where}.image_png_base64: not valid base64 ({err})") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{where}.image_png_base64: image is {width}x{height}, above the "
                    f"{MAX_IMAGE_PIXELS}-pixel limit"
                )
            converted = image.convert("L" if image.mode in ("1", "L") else "RGB")
            return np.array(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}.image_png_base64: not a decodable image ({err})") from None


def _check_inputs(images: list[np.ndarray], texts: list[str], references: list[str | None],
                  prompts: list[str]) -> None:
    check_batch(len(images), texts, references, prompts, "RewardDeployment.score")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError(f"RewardDeployment.score: images[{i}] must be a uint8 ndarray")
        if not (image.ndim == 2 or (image.ndim in (3, 4) and image.shape[-1] == 3)):
            raise ValueError(
                f"RewardDeployment.score: images[{i}] has shape {image.shape}, "
                "expected (H, W) or (H, W, 3), or video frames (F, H, W, 3)"
            )


class ScoreItem(BaseModel):
    """One HTTP item: a base64 PNG (or other Pillow-readable) image, the text to score, and for
    rule-function sources the record's reference (default none) and prompt (default "")."""

    image_png_base64: str
    text: str
    reference: Optional[str] = None
    prompt: str = ""


class ScoreRequest(BaseModel):
    """HTTP request body: 1 to MAX_ITEMS_PER_REQUEST items."""

    items: list[ScoreItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ScoreResponse(BaseModel):
    """HTTP response: one total score per item, in order (null: unscored), and the weights
    version that scored them (the lowest, if a weight swap landed between the request's batches)."""

    scores: list[Optional[float]]
    version: int


app = FastAPI(title="mmrlhf reward model")


@serve.deployment
@serve.ingress(app)
class RewardDeployment:
    """Serve deployment scoring items (image, response, reference, prompt) with every reward source.

    scorer_factory: user_config -> scorer of the learned model; None uses
    `default_scorer_factory` (RewardScorer).
    max_batch_size, batch_wait_timeout_s (seconds): the `@serve.batch` queue's limits.
    sources: the `reward.sources` list; None is the learned model alone. Its rule functions are
    imported in `__init__`, so one that cannot be imported fails the replica (ValueError).
    The learned model's scorer is built on the first `reconfigure` (Serve calls it right after
    `__init__` with the deployment's user_config) and swapped in place by later ones.
    """

    def __init__(
        self,
        scorer_factory: ScorerFactory | None = None,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        sources: Sequence[RewardSourceConfig] | None = None,
    ) -> None:
        self._scorer_factory = scorer_factory or default_scorer_factory
        self._sources = RewardSources(sources or [RewardSourceConfig()])
        self._version = -1
        self._items_scored = 0
        self._fault = "none"
        self._unhang = asyncio.Event()
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict) -> None:
        """Load the weights named by user_config {"weights_dir": str, "version": int, "device"?};
        without a learned-model source there are none ({"version": int} only).

        Async, so it runs on the replica's event loop between batches and a batch never sees
        half-swapped weights. Raises ValueError when "weights_dir" is missing while a source uses
        the learned model (`model`, `clipscore`), or given while none does.
        """
        if self._sources.needs_model != ("weights_dir" in user_config):
            raise ValueError(
                f"RewardDeployment.reconfigure: user_config {user_config!r} must have a 'weights_dir' "
                f"exactly when a source uses the learned model's weights (sources: {self._sources.labels})"
            )
        if self._sources.needs_model and self._sources.scorer is None:
            self._sources.scorer = self._scorer_factory(user_config)
        elif self._sources.needs_model:
            self._sources.scorer.load_weights(user_config["weights_dir"])
        self._version = int(user_config.get("version", 0))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def score_batch(self, items: list[Item]) -> list[tuple[dict[str, float], int]]:
        """Batched scoring: items [(uint8 image (H, W) or (H, W, 3), response, reference or
        None, prompt)] -> [({source label: score, "total": score}, version)].

        Called one item at a time; Serve gathers concurrent calls into `items`.
        Raises ValueError naming a source that fails (`RewardSources.score`), RuntimeError
        without a scorer for the learned model.
        """
        await self._apply_fault()
        images, texts, references, prompts = (list(column) for column in zip(*items))
        scores = self._sources.score(images, texts, references, prompts)  # {label: (B,)}
        self._items_scored += len(items)
        return [({label: float(v[i]) for label, v in scores.items()}, self._version) for i in range(len(items))]

    async def _score_items(self, items: list[Item]) -> list[tuple[dict[str, float], int]]:
        return await asyncio.gather(*(self.score_batch(item) for item in items))

    async def score(self, images: list[np.ndarray], texts: list[str], references: list[str | None],
                    prompts: list[str]) -> dict[str, np.ndarray]:
        """Every source's scores of B items: images uint8 (H, W) or (H, W, 3), the responses,
        their records' references (None: no reference) and prompts.

        Returns {source label: float32 (B,), "total": float32 (B,)}, NaN where unscored (see
        `RewardSources.score`), and {"reward_version": int64 (B,)}, the user_config version whose
        weights scored each item (items of one call may straddle a weight swap). The handle entry point for rollout workers:
        `await handle.score.remote(images, texts, references, prompts)`.
        Raises ValueError for mismatched lengths or a bad item, naming its index, and for a
        source that fails, naming it.
        """
        _check_inputs(images, texts, references, prompts)
        scored = await self._score_items(list(zip(images, texts, references, prompts)))
        scores = {label: np.array([s[label] for s, _ in scored], dtype=np.float32)
                  for label in [*self._sources.labels, TOTAL]}
        return {**scores, REWARD_VERSION: np.array([v for _, v in scored], dtype=np.int64)}

    def weights_version(self) -> int:
        """The `version` of the user_config whose weights are loaded (-1 before any)."""
        return self._version

    def items_scored(self) -> int:
        """How many (image, text) items this replica has scored since it started."""
        return self._items_scored

    async def check_health(self) -> None:
        """Serve's periodic health check: `check_scorer_health` when the learned model is a
        source, and `inject_fault`."""
        await self._apply_fault()
        if self._sources.needs_model:
            check_scorer_health(self._sources.scorer)

    async def inject_fault(self, mode: str) -> str:
        """For fault tests: from now on this replica's health check and scoring fail ("fail"),
        block until the mode changes ("hang"), or work ("none"). Returns the replica's id.

        Raises ValueError for another mode.
        """
        if mode not in FAULTS:
            raise ValueError(f"RewardDeployment.inject_fault: mode {mode!r}, expected one of {FAULTS}")
        self._fault = mode
        if mode == "hang":
            self._unhang.clear()
        else:
            self._unhang.set()
        return self.replica_id()

    async def _apply_fault(self) -> None:
        if self._fault == "hang":
            await self._unhang.wait()
        if self._fault == "fail":
            raise RuntimeError(f"RewardDeployment replica {self.replica_id()}: failing on purpose (inject_fault)")

    def replica_id(self) -> str:
        """Serve's unique id of this replica (a replaced replica gets a new one)."""
        return serve.get_replica_context().replica_id.unique_id

    @app.post("/score", response_model=ScoreResponse)
    async def score_http(self, request: ScoreRequest) -> ScoreResponse:
        """HTTP: {"items": [{"image_png_base64", "text", "reference"?, "prompt"?}]} ->
        {"scores": the totals (null where unscored), "version"}.

        400 names the first item whose image is bad; 422 (FastAPI) for a malformed body,
        e.g. empty `items` or more than MAX_ITEMS_PER_REQUEST.
        """
        try:
            images = [
                decode_image(item.image_png_base64, f"items[{i}]")
                for i, item in enumerate(request.items)
            ]
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        scored = await self._score_items([(image, item.text, item.reference, item.prompt)
                                          for image, item in zip(images, request.items)])
        totals = [s[TOTAL] for s, _ in scored]
        return ScoreResponse(scores=[t if np.isfinite(t) else None for t in totals],
                             version=min(v for _, v in scored))


def build_reward_app(
    weights_dir: str | Path | None,
    max_batch_size: int = 16,
    replicas: int | dict[str, Any] = 1,
    ray_actor_options: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    scorer_factory: ScorerFactory | None = None,
    version: int = 0,
    batch_wait_timeout_s: float = 0.01,
    health_check_period_s: float = 10.0,
    health_check_timeout_s: float = 30.0,
    device: str = "cpu",
    sources: Sequence[RewardSourceConfig] | None = None,
) -> Application:
    """The reward Serve application, ready for `deploy_reward` (or `serve.run`).

    sources: the reward sources (`reward.sources`); None is the learned model alone. Their rule
    functions are imported here first, so a bad one is reported before anything is deployed.
    weights_dir: what the learned model's scorer loads (None when no source is the learned
    model); with `version` it forms the user_config (see the module docstring for how a new one
    reaches the replicas).
    replicas: a fixed replica count, or a Serve `autoscaling_config` dict (e.g.
    {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}).
    ray_actor_options: per replica, e.g. {"num_cpus": 1, "num_gpus": 0.5}; default 1 CPU.
    max_ongoing_requests: per replica; default max(MIN_ONGOING_REQUESTS, 2 * max_batch_size); must
    be >= max_batch_size or batches could never fill. batch_wait_timeout_s: seconds a partial batch waits for more.
    health_check_period_s, health_check_timeout_s: how often Serve runs `check_health` and how
    long one may take before the replica counts as unhealthy and is replaced (seconds).
    device: where each replica's scorer runs ("cuda" needs `num_gpus` in `ray_actor_options`).
    Raises ValueError naming the bad argument or reward source.
    """
    sources = list(sources or [RewardSourceConfig()])
    load_rule_functions(sources)
    if uses_model(sources) != (weights_dir is not None):
        raise ValueError(f"build_reward_app: weights_dir={weights_dir!r} with sources "
                         f"{[s.name for s in sources]}: the learned model's weights are needed exactly "
                         f"when a source is {MODEL_SOURCE!r} or {CLIPSCORE_SOURCE!r}")
    if max_batch_size < 1:
        raise ValueError(f"build_reward_app: max_batch_size={max_batch_size}, must be >= 1")
    max_ongoing_requests = max_ongoing_requests or max(MIN_ONGOING_REQUESTS, 2 * max_batch_size)
    if max_ongoing_requests < max_batch_size:
        raise ValueError(
            f"build_reward_app: max_ongoing_requests={max_ongoing_requests} is below "
            f"max_batch_size={max_batch_size}"
        )
    if isinstance(replicas, dict):
        scaling = {"autoscaling_config": replicas}
    else:
        scaling = {"num_replicas": replicas}
    init_args = (scorer_factory, max_batch_size, batch_wait_timeout_s, sources)
    return RewardDeployment.options(
        **scaling,
        # Serve's Python API would draw a random code version per deploy and restart the replicas;
        # a hash of what they are built from makes a user_config-only redeploy an in-place update.
        version=code_version(init_args), _internal=True,
        ray_actor_options=ray_actor_options or {"num_cpus": 1},
        max_ongoing_requests=max_ongoing_requests,
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=health_check_timeout_s,
        # One access-log line per scored item would drown the run's own progress output.
        logging_config={"enable_access_log": False},
        user_config={"version": version, "device": device,
                     **({"weights_dir": str(weights_dir)} if weights_dir is not None else {})},
    ).bind(*init_args)


def code_version(init_args: tuple, source: str | Path = __file__) -> str:
    """The deployment's code version: SHA-256 (16 hex digits) of its pickled init arguments and
    of the deployment's module source (`source`, default this module), so a change to either
    restarts the replicas on the next deploy."""
    digest = hashlib.sha256(cloudpickle.dumps(init_args))
    digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def deploy_reward(
    app: Application,
    name: str = "reward",
    route_prefix: str | None = None,
    http_host: str = "127.0.0.1",
    http_port: int = 8000,
) -> DeploymentHandle:
    """Run `app` on Serve and return its handle
    (`handle.score.remote(images, texts, references, prompts)`).

    route_prefix: None (default) serves handles only, with no HTTP proxy at all; e.g.
    "/reward" also serves POST {route_prefix}/score on http_host:http_port from one proxy on
    the head node. Keep the host on 127.0.0.1 unless the port is firewalled: the proxy has no
    authentication. Proxy and HTTP options are cluster-wide and fixed when Serve first starts on
    the cluster (Ray docs, `serve.start`); to change them, `serve.shutdown()` first.
    Deploying again under the same name replaces the application's replicas with ones built
    from the new app (rolling update). Blocks until the replicas are running.
    """
    if route_prefix is None:
        serve.start(proxy_location="Disabled")
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": http_host, "port": http_port})
    return serve.run(app, name=name, route_prefix=route_prefix)


class RewardSourceArgs(BaseModel):
    """One entry of `RewardAppArgs.sources` (as `mmrlhf.config.RewardSourceConfig`)."""

    model_config = {"extra": "forbid"}

    name: str = MODEL_SOURCE
    weight: float = 1.0


class RewardAppArgs(BaseModel):
    """`args` of the reward application in a Serve config file (`serve deploy`, RayService).

    weights_dir: the trained reward model (`<run_dir>/reward/model`, on storage every node
    mounts); leave it out when no source is the learned model.
    sources: the reward sources, as `reward.sources` (default: the learned model alone); their
    rule functions must be importable on every node.
    max_batch_size, batch_wait_timeout_s (seconds): `@serve.batch` limits. Unknown keys are
    refused, so a misspelt argument fails the deploy instead of being ignored.
    """

    model_config = {"extra": "forbid"}

    weights_dir: Optional[str] = None
    sources: list[RewardSourceArgs] = Field(default_factory=lambda: [RewardSourceArgs()])
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)


def reward_app_builder(args: RewardAppArgs) -> Application:
    """Application builder for Serve config files: `import_path:
    mmrlhf.reward.serve_app:reward_app_builder` with `args` as in `RewardAppArgs`.

    The config's `deployments` entry for `RewardDeployment` sets replicas, autoscaling,
    `ray_actor_options` and `user_config` (e.g. `device: cuda`); those override the defaults of
    `build_reward_app`. Serve validates `args` against `RewardAppArgs` before calling this.
    """
    return build_reward_app(args.weights_dir, max_batch_size=args.max_batch_size,
                            batch_wait_timeout_s=args.batch_wait_timeout_s,
                            sources=[RewardSourceConfig(s.name, s.weight) for s in args.sources])
