"""Cluster-aware standard errors against the textbook cases."""

import math

import numpy as np
import pytest

from mmrlhf.stats import (bootstrap_interval, bootstrap_se, mean_interval, product_weight_bootstrap,
                          small_sample_warning, wilson_interval)


def test_independent_rows_give_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.3).astype(float)
    se = bootstrap_se(x, [[i] for i in range(len(x))], n_boot=4000)
    assert se == pytest.approx(math.sqrt(x.mean() * (1 - x.mean()) / len(x)), rel=0.08)


def test_rows_that_share_a_cluster_count_once_so_the_error_grows():
    rng = np.random.default_rng(1)
    x = (rng.random(200) < 0.5).astype(float)
    duplicated = np.repeat(x, 4)  # every value four times, the four copies in one cluster
    naive = math.sqrt(duplicated.mean() * (1 - duplicated.mean()) / len(duplicated))
    se = bootstrap_se(duplicated, [[i // 4] for i in range(len(duplicated))], n_boot=4000)
    assert se == pytest.approx(2 * naive, rel=0.1)  # sqrt(4) as large: only 200 independent values


def test_paired_columns_share_draws_and_bad_input_is_refused():
    x = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    draws = product_weight_bootstrap(x, [[0], [1], [2, 0]], n_boot=50)
    assert draws.shape == (50, 2) and (draws[:, 0] >= draws[:, 1]).all()
    with pytest.raises(ValueError, match="3 values for 2 cluster lists"):
        bootstrap_se(x, [[0], [1]])
    with pytest.raises(ValueError, match="at least one cluster id"):
        bootstrap_se(x, [[0], [], [1]])


def _wilson_by_inversion(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval from its definition: every p with |p_hat - p| <= z sqrt(p (1 - p) / n), by a fine grid."""
    p = np.linspace(0, 1, 2_000_001)
    inside = p[np.abs(successes / n - p) <= z * np.sqrt(p * (1 - p) / n)]
    return float(inside.min()), float(inside.max())


@pytest.mark.parametrize("successes, n", [(0, 1), (0, 3), (3, 3), (1, 4), (7, 29), (15, 20)])
def test_wilson_interval_matches_its_definition(successes, n):
    assert wilson_interval(successes, n) == pytest.approx(_wilson_by_inversion(successes, n), abs=2e-6)


def test_wilson_interval_hand_worked_and_bad_counts_refused():
    low, high = wilson_interval(0, 3)  # z^2 / (n + z^2) = 3.8415 / 6.8415
    assert low == 0.0 and high == pytest.approx(0.56150, abs=1e-5)
    with pytest.raises(ValueError, match="4 successes of 3 trials"):
        wilson_interval(4, 3)
    with pytest.raises(ValueError, match="0 successes of 0 trials"):
        wilson_interval(0, 0)


def test_bootstrap_interval_is_the_quantiles_of_resampled_statistics():
    values = np.array([0.0, 1.0, 1.0, 3.0, 5.0, 8.0])
    rng = np.random.default_rng(0)  # the same draws, one by one
    draws = [values[rng.integers(0, 6, size=6)].mean() for _ in range(500)]
    assert mean_interval(values, n_boot=500) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert mean_interval(np.full(5, 2.5)) == (2.5, 2.5)
    with pytest.raises(ValueError, match="n=0"):
        bootstrap_interval(lambda idx: 0.0, 0)


def test_small_sample_warning_below_thirty_only():
    assert small_sample_warning(30, "test examples") is None
    assert small_sample_warning(3, "held-out pairs").startswith("warning: these numbers rest on 3 held-out pairs")
