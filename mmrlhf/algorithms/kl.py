"""KL penalty to the reference policy: per-token estimators and KL-coefficient controllers.

Sign convention: the penalised quantity is KL(policy || reference), estimated from tokens
sampled from the policy; `logprobs` are the policy's, `ref_logprobs` the reference's.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) (Schulman 2020, "Approximating KL divergence").

    logprobs, ref_logprobs: (B, R) log-probs in nats of the sampled tokens under the policy and
    the reference policy. With log r = ref_logprobs - logprobs:
      k1 = -log r               unbiased, can be negative per token
      k2 = (log r)^2 / 2        biased, >= 0, low variance
      k3 = (r - 1) - log r      unbiased, >= 0, low variance
    Returns (B, R) in nats (no masking). Raises ValueError for an unknown `estimator`.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")
    log_ratio = ref_logprobs - logprobs  # log r = log q(x)/p(x), x ~ p
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    # expm1 keeps k3 accurate when r is close to 1, where (r - 1) - log r cancels.
    return torch.expm1(log_ratio) - log_ratio


class FixedKLController:
    """Constant KL coefficient beta (Ziegler et al. 2019, fixed-beta variant)."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"FixedKLController: kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed (same signature as AdaptiveKLController)."""

    def state_dict(self) -> dict[str, float]:
        """Controller state as plain floats (JSON-serialisable)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from `state_dict()`; raises ValueError if "value" is missing."""
        self.value = _read_value(state, type(self).__name__)


class AdaptiveKLController:
    """KL coefficient beta adapted towards a target KL (Ziegler et al. 2019, sec. 2.2).

    init_kl_coef: starting beta (>= 0). target: desired KL per sequence in nats (> 0).
    horizon: number of samples over which beta may change by about e^{0.2} (> 0).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                "AdaptiveKLController: need init_kl_coef >= 0, target > 0, horizon > 0; got "
                f"init_kl_coef={init_kl_coef}, target={target}, horizon={horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Move beta after observing mean KL `current_kl` (nats) over `n_steps` samples.

        ALGO: e_t = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e_t * n_steps / horizon).
        """
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Controller state as plain floats (JSON-serialisable); target/horizon come from config."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from `state_dict()`; raises ValueError if "value" is missing."""
        self.value = _read_value(state, type(self).__name__)


def _read_value(state: dict[str, float], owner: str) -> float:
    if "value" not in state:
        raise ValueError(f"{owner}.load_state_dict: state has keys {sorted(state)}, needs 'value'")
    return float(state["value"])
