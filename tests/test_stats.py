"""Cluster-aware standard errors against the textbook cases."""

import math

import numpy as np
import pytest

from mmrlhf.stats import bootstrap_se, product_weight_bootstrap


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
