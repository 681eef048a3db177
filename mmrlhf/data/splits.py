"""Splitting a user's records by image, so that no image is in two splits.

Records that share an image (the same file named twice in a manifest, a copy of the same file,
or an image with several captions) are one group; groups, not records, are drawn by a seeded
permutation into the splits. Readers re-encode every image as PNG (`mmrlhf.data.formats`), so
equal pixels give equal bytes and a SHA-256 of the stored bytes identifies an image whatever
its path or original encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def image_groups(table: pa.Table) -> list[list[int]]:
    """Row indices of `table` (RECORD_SCHEMA) grouped by image, groups in order of first row.

    Two rows are in one group when their `image` bytes have the same SHA-256.
    """
    groups: dict[str, list[int]] = {}
    for row, data in enumerate(table.column("image").to_pylist()):
        groups.setdefault(hashlib.sha256(data).hexdigest(), []).append(row)
    return list(groups.values())


def split_by_image(table: pa.Table, names: Sequence[str], fractions: Sequence[float], seed: int,
                   what: str) -> dict[str, pa.Table]:
    """Split `table` (RECORD_SCHEMA) into `names` with every image's records in one split.

    The image groups (:func:`image_groups`) are permuted with ``np.random.default_rng(seed)``
    and cut at ``round(fraction * n_images)`` for each split but the last, which takes the rest;
    each split keeps its rows in table order and has its `split` column set to its name.
    `what` names the data in errors (e.g. the user's file).

    Raises:
        ValueError: `names` and `fractions` differ in length; a split would get no image (names
            it, the record and image counts and every split's size).
    """
    if len(names) != len(fractions):
        raise ValueError(f"split_by_image: {len(names)} split names for {len(fractions)} fractions")
    groups = image_groups(table)
    n = len(groups)
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *(int(round(f * n)) for f in fractions[:-1])]).tolist() + [n]
    sizes = {name: max(hi - lo, 0) for name, lo, hi in zip(names, bounds[:-1], bounds[1:])}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        counts = ", ".join(f"{name} {size}" for name, size in sizes.items())
        shares = "/".join(f"{100 * f:g}" for f in fractions)
        raise ValueError(f"{what}: {table.num_rows} usable records of {n} distinct images leave no image for "
                         f"split {', '.join(empty)} ({counts} images; the splits take {shares}% of the images): "
                         "add images")
    out = {}
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        rows = sorted(row for g in order[lo:hi] for row in groups[g])
        part = table.take(pa.array(rows, pa.int64()))
        out[name] = part.set_column(part.schema.get_field_index("split"), "split", pa.array([name] * len(rows)))
    return out
