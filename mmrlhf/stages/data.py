"""Stage 1, data: multimodal records → Parquet splits in the run directory.

The embedded default builds the digits task (``mmrlhf.data.digits``); a user's manifest, COCO
captions or LLaVA JSON is read with ``mmrlhf.data.formats`` and split by a seeded permutation
into the same four pools (sft, feedback, val, test), so every later stage reads one layout.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrlhf.config import DataConfig, RunConfig
from mmrlhf.data import formats
from mmrlhf.data.digits import DigitsSpec, write_digits
from mmrlhf.data.media import decode_image
from mmrlhf.data.schema import RECORD_SCHEMA, read_table, write_table
from mmrlhf.stages.common import RunPaths

log = logging.getLogger(__name__)

SPLITS = ("sft", "feedback", "val", "test")
_USER_FRACTIONS = (0.25, 0.45, 0.1, 0.2)  # same proportions as the digits pools


def digits_spec(cfg: DataConfig) -> DigitsSpec:
    """The :class:`DigitsSpec` for ``cfg``: every field the two share is copied."""
    shared = {f.name for f in dataclasses.fields(DigitsSpec)} & {f.name for f in dataclasses.fields(cfg)}
    return DigitsSpec(**{name: getattr(cfg, name) for name in shared})


def _read_user_records(cfg: DataConfig) -> pa.Table:
    """The usable records of the user's file, skipped ones logged.

    Raises:
        ValueError: no record is usable (names the file and how many were read and skipped).
    """
    options = {"max_pixels": cfg.max_image_pixels, "allow_urls": cfg.allow_urls}
    readers = {
        "manifest": lambda: formats.read_manifest(cfg.path, **options),
        "coco": lambda: formats.read_coco_captions(cfg.image_dir, cfg.path, **options),
        "llava": lambda: formats.read_llava_json(cfg.path, cfg.image_dir, **options),
    }
    table, report = readers[cfg.source]()
    for record_id, reason in report.skipped:
        log.warning("skipped record %s: %s", record_id, reason)
    print(f"data: read {report.n_read} records from {cfg.path}, skipped {report.n_skipped}")
    if table.num_rows == 0:
        raise ValueError(f"{cfg.path}: no usable record (read {report.n_read}, skipped {report.n_skipped}; "
                         "the reasons are logged above)")
    return table


def _split_user_records(table: pa.Table, seed: int, path: str) -> dict[str, pa.Table]:
    """Split ``table`` by a seeded permutation into SPLITS at ``_USER_FRACTIONS`` (rounded).

    Raises:
        ValueError: a split would be empty (names it, the record count and every split's size).
    """
    order = np.random.default_rng(seed).permutation(table.num_rows)
    bounds = np.cumsum([0, *(int(round(f * table.num_rows)) for f in _USER_FRACTIONS[:-1]), table.num_rows])
    bounds[-1] = table.num_rows
    sizes = dict(zip(SPLITS, np.diff(bounds).tolist()))
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        counts = ", ".join(f"{name} {size}" for name, size in sizes.items())
        shares = "/".join(f"{100 * f:g}" for f in _USER_FRACTIONS)
        raise ValueError(f"{path}: {table.num_rows} usable records leave no record for split {', '.join(empty)} "
                         f"({counts}; the splits take {shares}% of the records): add records")
    out = {}
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        part = table.take(pa.array(np.sort(order[lo:hi])))
        out[name] = part.set_column(part.schema.get_field_index("split"), "split", pa.array([name] * part.num_rows))
    return out


def prepare_data(cfg: RunConfig, force: bool = False) -> dict[str, Path]:
    """Write ``<run_dir>/data/<split>.parquet`` for the four splits; returns their paths.

    Skips the work when all four files exist, unless ``force``.

    A user's records are split by a permutation seeded with ``data.seed``: 25/45/10/20% to
    sft/feedback/val/test (``_USER_FRACTIONS``). Nothing is written when a check fails.

    Raises:
        ValueError: a malformed user manifest (names the record and field); no usable record in
            it, or too few for every split to get one (names the file and the counts).
        FileNotFoundError: the user's data file is missing.
    """
    paths = RunPaths(cfg.run_dir)
    out = {name: paths.split(name) for name in SPLITS}
    if not force and all(p.exists() for p in out.values()):
        return out
    if cfg.data.source == "digits":
        written = write_digits(digits_spec(cfg.data), paths.data)
        return {name: Path(written[name]) for name in SPLITS}
    for name, part in _split_user_records(_read_user_records(cfg.data), cfg.data.seed, cfg.data.path).items():
        write_table(part, out[name], RECORD_SCHEMA)
    return out


def load_split(cfg: RunConfig, name: str) -> pa.Table:
    """Read one split written by :func:`prepare_data` (checked against ``RECORD_SCHEMA``)."""
    return read_table(RunPaths(cfg.run_dir).split(name), RECORD_SCHEMA)


def decode_images(table: pa.Table, max_pixels: int) -> list[np.ndarray]:
    """Decode the ``image`` column into uint8 arrays ``(H, W)`` or ``(H, W, 3)``.

    Raises:
        mmrlhf.data.media.ImageDecodeError: a stored image is unreadable (names the record).
    """
    ids = table.column("id").to_pylist()
    return [decode_image(data, rid, max_pixels) for rid, data in zip(ids, table.column("image").to_pylist())]
