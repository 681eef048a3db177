"""Stage 1, data: multimodal records → Parquet splits in the run directory.

The embedded default builds the digits task (``mmrlhf.data.digits``); a user's manifest, COCO
captions or LLaVA JSON is read with ``mmrlhf.data.formats`` and split by image with a seeded
permutation into the same four pools (sft, feedback, val, test), so every later stage reads one layout.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrlhf.config import DataConfig, RunConfig
from mmrlhf.data import formats
from mmrlhf.data import digits_video
from mmrlhf.data.digits import DigitsSpec, write_digits
from mmrlhf.data.media import MediaLimits
from mmrlhf.data.video import decode_media
from mmrlhf.data.schema import RECORD_SCHEMA, read_table, record_references, write_table
from mmrlhf.data.splits import split_by_image
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.lineage import (DATA, check_current, check_no_dependents, differences, lineage_of, read_lineage,
                                   write_lineage)

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
        "manifest": lambda: formats.read_manifest(cfg.path, media=cfg.media, **options),
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


def prepare_data(cfg: RunConfig, rebuild: bool = False, force: bool = False) -> dict[str, Path]:
    """Write ``<run_dir>/data/<split>.parquet`` for the four splits and ``data/lineage.json``; returns their paths.

    When all four files exist they are kept: checked to be current (:func:`check_current`) unless
    ``force``, or with ``rebuild`` (``mmrlhf data``) written again if the config or the user's
    data file changed since. Replacing splits that later stages were made from is refused
    (:func:`check_no_dependents`) unless ``force``.

    A user's images are split by a permutation seeded with ``data.seed``: 25/45/10/20% to
    sft/feedback/val/test (``_USER_FRACTIONS``), all records of one image in one split
    (:func:`mmrlhf.data.splits.split_by_image`). Nothing is written when a check fails.

    Raises:
        ValueError: a malformed user manifest (names the record and field); no usable record in
            it, or too few images for every split to get one (names the file and the counts).
        StaleOutputError: the splits are stale, or other outputs were made from them (see above).
        FileNotFoundError: the user's data file is missing.
    """
    paths = RunPaths(cfg.run_dir)
    out = {name: paths.split(name) for name in SPLITS}
    record = lineage_of(cfg, DATA, [] if cfg.data.builtin else [Path(cfg.data.path)])
    if all(p.exists() for p in out.values()):
        if not rebuild:
            check_current(cfg, DATA.folder, force)
            return out
        old = read_lineage(paths.root, DATA.folder)
        if old is not None and not differences(old, record) and not force:
            print(f"data: {paths.data} is up to date with the config and {cfg.data.path or 'the digits task'}")
            return out
    check_no_dependents(cfg, record, DATA.folder, force)
    if cfg.data.source == "digits":
        write_digits(digits_spec(cfg.data), paths.data)
    elif cfg.data.source == "digits_video":
        digits_video.write_clips(digits_spec(cfg.data), cfg.data.video_fps, paths.data)
    else:
        splits = split_by_image(_read_user_records(cfg.data), SPLITS, _USER_FRACTIONS, cfg.data.seed, cfg.data.path)
        for name, part in splits.items():
            write_table(part, out[name], RECORD_SCHEMA)
    write_lineage(cfg, record, DATA.folder)
    return out


def data_corpus(cfg: RunConfig) -> list[str]:
    """The prompts and every reference of all splits (built first if missing), for a preset's tokenizer.

    All splits, test included: a word first seen at test time would be `<unk>` however good the
    policy; its embedding is never trained on test data, only reserved.
    """
    prepare_data(cfg)
    texts: list[str] = []
    for name in SPLITS:
        table = load_split(cfg, name)
        texts += table.column("prompt").to_pylist()
        texts += [ref for refs in record_references(table) if refs for ref in refs]
    return texts


def load_split(cfg: RunConfig, name: str) -> pa.Table:
    """Read one split written by :func:`prepare_data` (checked against ``RECORD_SCHEMA``)."""
    return read_table(RunPaths(cfg.run_dir).split(name), RECORD_SCHEMA)


def decode_images(table: pa.Table, media: MediaLimits) -> list[np.ndarray]:
    """Decode each record's visual input (:func:`mmrlhf.data.video.decode_media`): uint8 video
    frames ``(F, H, W, 3)`` where the record has a ``video``, else its image ``(H, W)`` or ``(H, W, 3)``
    (a table without a ``video`` column holds images only).

    Raises:
        mmrlhf.data.media.ImageDecodeError: a stored image or video is unreadable (names the record).
    """
    ids, images = table.column("id").to_pylist(), table.column("image").to_pylist()
    videos = table.column("video").to_pylist() if "video" in table.column_names else [None] * len(ids)
    return [decode_media(image, video, rid, media) for rid, image, video in zip(ids, images, videos)]
