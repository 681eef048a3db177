"""The embedded video task: summarise a clip in which handwritten digits appear one after another.

Built from the same scans, pools and renderer as the image task (:mod:`mmrlhf.data.digits`): a
clip shows 2..``max_digits`` distinct scans of its split's pool, each drawn alone on the canvas
(:func:`mmrlhf.data.digits.render_row` of one scan: scale, rotation, position and noise drawn
afresh) and held for :data:`FRAMES_PER_DIGIT` frames at ``fps``; the prompt is "Summarize the
video." and the reference "four then seven then one" (scored by
:func:`mmrlhf.data.digits.gold_score`, which reads such summaries). Each clip is encoded with
PyAV (H.264 in MP4, :func:`mmrlhf.data.video.encode_video`) into the record's ``video``, its
first frame as the record's ``image``; the same spec, fps and seed give byte-identical tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrlhf.data.digits import SPLITS, THEN, DigitsSpec, digit_pools, digits_to_words, load_scans, render_row
from mmrlhf.data.media import encode_png
from mmrlhf.data.schema import RECORD_SCHEMA, to_table, write_table
from mmrlhf.data.video import encode_video

PROMPT = "Summarize the video."
# Each digit is held for two frames: at the decode rate (data.video_fps) the Qwen-VL families
# pair frames into one temporal patch, so one digit is one temporal step of the video tokens.
FRAMES_PER_DIGIT = 2


def digits_to_summary(digits: str) -> str:
    """"471" -> "four then seven then one". Raises ValueError naming a character that is not 0-9."""
    return f" {THEN} ".join(digits_to_words(digits).split())


def render_clip(scans: np.ndarray, spec: DigitsSpec, rng: np.random.Generator) -> np.ndarray:
    """Scans (n, 8, 8) in [0, 1] -> frames (n * FRAMES_PER_DIGIT, canvas, canvas, 3) uint8 RGB:
    each scan rendered alone (``render_row``) and held for FRAMES_PER_DIGIT frames."""
    frames = np.stack([render_row(scan[None], spec, rng) for scan in scans])  # (n, canvas, canvas)
    return np.repeat(np.repeat(frames[..., None], 3, axis=3), FRAMES_PER_DIGIT, axis=0)


def build_clips(spec: DigitsSpec, fps: float) -> dict[str, pa.Table]:
    """Build every split as a RECORD_SCHEMA table of clip records, keyed like SPLITS.

    ``spec.min_digits`` is raised to 2 (a summary joins at least two digits). Each split draws
    from its own seeded stream ([seed, 101 + split index], apart from the image task's). Record
    ids are "digits-video-<split>-<index>". Raises ValueError as :func:`digit_pools` does.
    """
    pools = digit_pools(spec)
    images, labels = load_scans()
    tables = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, 101 + index])
        records = []
        for i in range(spec.counts[split]):
            n_digits = int(rng.integers(max(2, spec.min_digits), max(2, spec.max_digits) + 1))
            scan_ids = rng.choice(pools[split], size=n_digits, replace=False)
            frames = render_clip(images[scan_ids], spec, rng)
            records.append({"id": f"digits-video-{split}-{i:05d}", "image": encode_png(frames[0]),
                            "video": encode_video(frames, fps), "prompt": PROMPT,
                            "reference": digits_to_summary("".join(str(labels[s]) for s in scan_ids)),
                            "split": split, "scan_ids": [int(s) for s in scan_ids]})
        tables[split] = to_table(records, RECORD_SCHEMA)
    return tables


def write_clips(spec: DigitsSpec, fps: float, out_dir: str | Path) -> dict[str, Path]:
    """Build the clip splits and write each to ``out_dir/<split>.parquet`` (atomic, validated)."""
    return {split: write_table(table, Path(out_dir) / f"{split}.parquet", RECORD_SCHEMA)
            for split, table in build_clips(spec, fps).items()}
