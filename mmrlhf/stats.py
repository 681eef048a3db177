"""Standard errors that respect a held-out set's structure: images composed from shared scans.

The digits test split holds 500 images built from a few hundred scans, each scan in several
images, so the images are not independent draws and the binomial standard error is too small.
:func:`product_weight_bootstrap` resamples the clusters (scans), not the rows: each cluster gets
a Poisson(1) weight and a row the product of its clusters' weights, the multiway bootstrap of
Owen & Eckles 2012 ("Bootstrapping data arrays of arbitrary order", product weights), which
reduces to the ordinary Poisson bootstrap when every row is its own cluster.
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
