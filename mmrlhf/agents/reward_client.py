"""The EnvRunner side of the reward call: the frame deployment through a `DeploymentHandle`,
retried a bounded number of times, then a clear error (never a made-up reward)."""

from __future__ import annotations

import logging
import time

import numpy as np

from mmrlhf.agents.serve_reward import REWARD, VERSION, frame_reward_handle

logger = logging.getLogger(__name__)


class RewardCallError(RuntimeError):
    """The reward deployment failed every attempt of one call."""


class RewardClient:
    """Calls `FrameRewardDeployment.score` for one batch of frames per EnvRunner step.

    attempts: calls per batch before giving up (>= 1); timeout_s: seconds each call may take;
    backoff_s: seconds before the second attempt, doubled for each later one.
    The handle is looked up on the first call, in the process that calls (an EnvRunner).
    """

    def __init__(self, attempts: int = 3, timeout_s: float = 30.0, backoff_s: float = 0.2) -> None:
        if attempts < 1:
            raise ValueError(f"RewardClient: attempts={attempts}, expected >= 1")
        self.attempts, self.timeout_s, self.backoff_s = attempts, timeout_s, backoff_s
        self._handle = None

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames: uint8 (B, S, S) or (B, C, S, S) -> (rewards float32 (B,), weights versions int64 (B,)).

        Raises RewardCallError naming the attempts and the last failure when every attempt fails.
        """
        if self._handle is None:
            self._handle = frame_reward_handle()
        for attempt in range(1, self.attempts + 1):
            try:
                reply = self._handle.score.remote(frames).result(timeout_s=self.timeout_s)
                return reply[REWARD], reply[VERSION]
            except Exception as err:  # Serve, Ray task and timeout errors alike: retried, then raised
                last = err
                logger.warning("reward call attempt %d/%d failed: %s", attempt, self.attempts,
                               str(err).splitlines()[0] if str(err) else type(err).__name__)
                if attempt < self.attempts:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
        first_line = str(last).strip().splitlines()[-1] if str(last).strip() else type(last).__name__
        raise RewardCallError(f"reward deployment call failed {self.attempts} times; last error: "
                              f"{type(last).__name__}: {first_line}") from last
