"""What an agent run reports at its end: the true return over the last part of the budget, and
the curves' PNG with the iterations in which no episode ended left out."""

import math

import numpy as np
import pytest
from PIL import Image

from mmrlhf.agents.report import final_return, plot_curves


def _rows(returns, step=100):
    return [{"env_steps": step * (i + 1), "true_return": r} for i, r in enumerate(returns)]


def test_final_return_is_the_mean_over_the_last_fifth_of_the_steps_skipping_nan():
    rng = np.random.default_rng(0)
    returns = [float(x) if rng.random() > 0.4 else math.nan for x in rng.normal(-500, 200, 50)]
    rows = _rows(returns)
    # reference: the rows at or after 80% of the last step count (the obvious loop)
    kept = []
    for row in rows:
        if row["env_steps"] >= 0.8 * rows[-1]["env_steps"] and not math.isnan(row["true_return"]):
            kept.append(row["true_return"])
    assert final_return(rows) == pytest.approx(sum(kept) / len(kept))
    assert final_return(_rows([1.0, 2.0, 3.0, 4.0, 5.0]), fraction=0.4) == pytest.approx(4.0)  # steps 300-500


def test_final_return_without_an_ended_episode_in_the_window_names_it():
    with pytest.raises(ValueError, match="no episode ended in the last 20% of 1000 env steps"):
        final_return(_rows([1.0] * 7 + [math.nan] * 3))  # steps 800-1000


def test_curves_png_draws_the_finite_points(tmp_path):
    path = plot_curves(tmp_path / "c.png", {"a": ([1, 2, 3], [1.0, math.nan, 3.0]), "none": ([1], [math.nan])},
                       0.5, "t")
    assert Image.open(path).size[0] > 100
