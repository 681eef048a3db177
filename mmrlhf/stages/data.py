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
    readers = {
        "manifest": lambda: formats.read_manifest(cfg.path, max_pixels=cfg.max_image_pixels, allow_urls=cfg.allow_urls),
        "coco": lambda: formats.read_coco_captions(cfg.image_dir, cfg.path, max_pixels=cfg.max_image_pixels),
        "llava": lambda: formats.read_llava_json(cfg.path, cfg.image_dir, max_pixels=cfg.max_image_pixels),
    }
    table, report = readers[cfg.source]()
    for record_id, reason in report.skipped:
        log.warning("skipped record %s: %s", record_id, reason)
    print(f"data: read {report.n_read} records from {cfg.path}, skipped {report.n_skipped}")
    return table


def _split_user_records(table: pa.Table, seed: int) -> dict[str, pa.Table]:
    order = np.random.default_rng(seed).permutation(table.num_rows)
    bounds = np.cumsum([0, *(int(round(f * table.num_rows)) for f in _USER_FRACTIONS[:-1]), table.num_rows])
    bounds[-1] = table.num_rows
    out = {}
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        part = table.take(pa.array(np.sort(order[lo:hi])))
        out[name] = part.set_column(part.schema.get_field_index("split"), "split", pa.array([name] * part.num_rows))
    return out


def prepare_data(cfg: RunConfig, force: bool = False) -> dict[str, Path]:
    """Write ``<run_dir>/data/<split>.parquet`` for the four splits; returns their paths.

    Skips the work when all four files exist, unless ``force``.

    Raises:
        ValueError: a malformed user manifest (names the record and field).
        FileNotFoundError: the user's data file is missing.
    """
    paths = RunPaths(cfg.run_dir)
    out = {name: paths.split(name) for name in SPLITS}
    if not force and all(p.exists() for p in out.values()):
        return out
    if cfg.data.source == "digits":
        written = write_digits(digits_spec(cfg.data), paths.data)
        return {name: Path(written[name]) for name in SPLITS}
    for name, part in _split_user_records(_read_user_records(cfg.data), cfg.data.seed).items():
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
