"""The frame reward model on Ray Serve, called by EnvRunners through a `DeploymentHandle`.

Ray Serve docs: "Dynamic Request Batching" (`@serve.batch`: the frame batches of concurrent
EnvRunner steps are scored in one forward pass) and "In-place updates through user_config"
(`reconfigure` swaps the weights between batches; `deploy_frame_reward` again redeploys with only a new
user_config and the pinned code version of `mmrlhf.reward.serve_app.code_version`, so the
replicas stay and the EnvRunners' handles keep working).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from mmrlhf.agents.reward_model import FrameRewardEnsemble
from mmrlhf.reward.serve_app import code_version

APP_NAME = "agent_reward"
DEPLOYMENT_NAME = "FrameRewardDeployment"
REWARD = "reward"
VERSION = "reward_version"


@serve.deployment
class FrameRewardDeployment:
    """Scores grey frames uint8 (B, S, S) or frame stacks (B, C, S, S) with a `FrameRewardEnsemble`
    loaded from user_config.

    user_config: {"weights_dir": directory written by `FrameRewardEnsemble.save`, "version": int}.
    """

    def __init__(self) -> None:
        self._ensemble: FrameRewardEnsemble | None = None
        self._version = -1
        self._failures_left = 0
        self._calls = 0

    def reconfigure(self, user_config: dict) -> None:
        """Load `user_config["weights_dir"]` and take its "version" (Serve calls this on deploy and
        on every new user_config). Raises ValueError without a weights_dir."""
        if "weights_dir" not in user_config:
            raise ValueError(f"FrameRewardDeployment: user_config {user_config!r} has no 'weights_dir'")
        self._ensemble = FrameRewardEnsemble.load(user_config["weights_dir"])
        self._version = int(user_config.get("version", 0))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _score_batch(self, batches: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        sizes = [len(b) for b in batches]
        rewards = self._ensemble.rewards(np.concatenate(batches))  # (sum B,)
        return [(part, self._version) for part in np.split(rewards, np.cumsum(sizes)[:-1])]

    async def score(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: uint8 (B, *input_shape) -> {"reward": float32 (B,), "reward_version": int64 (B,)}.

        Raises ValueError for frames of the wrong shape or dtype, RuntimeError while a failure
        set by `fail_next` is pending.
        """
        self._calls += 1
        if self._failures_left > 0:
            self._failures_left -= 1
            raise RuntimeError(f"FrameRewardDeployment: failing on purpose ({self._failures_left} more, fail_next)")
        frames = self._ensemble.check_frames(frames, "FrameRewardDeployment.score", batch="B")
        rewards, version = await self._score_batch(frames)
        return {REWARD: rewards, VERSION: np.full(len(frames), version, dtype=np.int64)}

    def fail_next(self, calls: int) -> int:
        """For fault tests: the next `calls` score calls raise. Returns the score calls so far."""
        self._failures_left = calls
        return self._calls

    def calls(self) -> int:
        """How many score calls this replica has received."""
        return self._calls


def build_frame_reward_app(weights_dir: str | Path, version: int = 0, num_cpus: float = 0.5) -> Application:
    """The deployment (one replica of `num_cpus` logical CPUs) bound to `weights_dir` at `version`."""
    return FrameRewardDeployment.options(
        version=code_version((), Path(__file__)), _internal=True,
        ray_actor_options={"num_cpus": num_cpus},
        logging_config={"enable_access_log": False},
        user_config={"weights_dir": str(Path(weights_dir).resolve()), "version": version},
    ).bind()


def deploy_frame_reward(weights_dir: str | Path, version: int = 0, num_cpus: float = 0.5) -> DeploymentHandle:
    """Run the deployment as application `agent_reward` (handles only, no HTTP proxy); blocks until it
    is running. Called again while it runs, with new weights and version, it swaps the weights in
    place: the code version is the same, so only the user_config changes and the replicas stay."""
    serve.start(proxy_location="Disabled")
    return serve.run(build_frame_reward_app(weights_dir, version, num_cpus), name=APP_NAME, route_prefix=None)


def frame_reward_handle() -> DeploymentHandle:
    """A handle to the running deployment, from any process of the cluster (e.g. an EnvRunner)."""
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
