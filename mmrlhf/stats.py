"""Standard errors that respect a held-out set's structure: images composed from shared scans.

The digits test split holds 500 images built from a few hundred scans, each scan in several
images, so the images are not independent draws and the binomial standard error is too small.
:func:`product_weight_bootstrap` resamples the clusters (scans), not the rows: each cluster gets
a Poisson(1) weight and a row the product of its clusters' weights, the multiway bootstrap of
Owen & Eckles 2012 ("Bootstrapping data arrays of arbitrary order", product weights), which
reduces to the ordinary Poisson bootstrap when every row is its own cluster.

Small held-out sets (fewer than :data:`SMALL_SAMPLE` examples or pairs) get 95% intervals
printed beside their numbers: :func:`wilson_interval` for proportions (exact match, pairwise
accuracy), :func:`bootstrap_interval` for the rest, and :func:`small_sample_warning`.
"""

from __future__ import annotations

import numpy as np


def product_weight_bootstrap(values: np.ndarray, clusters: list[list[int]], n_boot: int = 2000,
                             seed: int = 0) -> np.ndarray:
    """Bootstrap draws of the weighted mean of ``values``: ``(n_boot, *values.shape[1:])``.

    values: (N,) or (N, K) per-row numbers (e.g. exact match 0/1 of several policies side by
    side, so their differences share the same draws). clusters: for each row, the ids of the
    clusters it belongs to (e.g. its scans); ids are any non-negative ints. A draw whose weights
    are all 0 is redrawn. Raises ValueError for a length mismatch or a row with no cluster.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) != len(clusters) or not len(values):
        raise ValueError(f"product_weight_bootstrap: {len(values)} values for {len(clusters)} cluster lists")
    if any(not c for c in clusters):
        raise ValueError("product_weight_bootstrap: every row needs at least one cluster id")
    ids = sorted({c for row in clusters for c in row})
    column = {c: i for i, c in enumerate(ids)}
    members = [np.array([column[c] for c in row]) for row in clusters]
    rng = np.random.default_rng(seed)
    draws = []
    while len(draws) < n_boot:
        w_cluster = rng.poisson(1.0, size=len(ids)).astype(np.float64)
        w = np.array([w_cluster[m].prod() for m in members])
        if w.sum() > 0:
            draws.append(np.tensordot(w, values, axes=1) / w.sum())
    return np.stack(draws)


def bootstrap_se(values: np.ndarray, clusters: list[list[int]], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Standard error of the mean of ``values`` ((N,) or (N, K)) from :func:`product_weight_bootstrap`."""
    return product_weight_bootstrap(values, clusters, n_boot, seed).std(axis=0, ddof=1)


# Below this many examples a held-out number is printed with a warning and its 95% interval.
SMALL_SAMPLE = 30
_Z95 = 1.959963984540054  # standard normal quantile at 0.975


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of a binomial proportion: ``(low, high)`` in 0–1.

    successes of n trials; z: the normal quantile of the level (default 95%, two-sided). Unlike
    p ± z·se it stays inside [0, 1] and is not empty at 0 or n successes (0 of 3: 0 to 0.56).
    Raises ValueError unless ``0 <= successes <= n`` and ``n >= 1``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes of {n} trials, expected 0 <= successes <= n, n >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def bootstrap_interval(statistic, n: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of a statistic of n rows.

    statistic: a function of an index array ``(n,)`` (rows drawn with replacement) returning a
    float, e.g. ``lambda idx: values[idx].mean()`` or a corpus BLEU over those rows; units are
    the statistic's. Returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    ``n_boot`` draws. Raises ValueError when ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"bootstrap_interval: n={n}, expected at least one row")
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def mean_interval(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` ``(N,)`` (:func:`bootstrap_interval`)."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_interval(lambda idx: values[idx].mean(), len(values), n_boot, seed)


def small_sample_warning(n: int, what: str) -> str | None:
    """The warning printed beside numbers that rest on fewer than :data:`SMALL_SAMPLE`
    ``what`` (e.g. "test examples"); None for enough of them."""
    if n >= SMALL_SAMPLE:
        return None
    return (f"warning: these numbers rest on {n} {what} (fewer than {SMALL_SAMPLE}): read them with their 95% "
            "intervals; a difference inside them may be noise")


def interval_keys(name: str, interval: tuple[float, float]) -> dict[str, float]:
    """``{"<name>_low": low, "<name>_high": high}``, the keys an interval is reported under."""
    return {f"{name}_low": interval[0], f"{name}_high": interval[1]}
