"""The embedded default task: read a row of handwritten digits aloud ("four one seven").

Source: the UCI optical-recognition handwritten digits, 1,797 real 8x8 scans with 17 gray
levels, shipped inside scikit-learn (`sklearn.datasets.load_digits`), so nothing is downloaded.
The scans are split once, by a seeded permutation, into four disjoint pools (sft, feedback,
val, test); each split's records are composed only from its own pool's scans, so no scan is
seen in two roles. `scan_ids` on every record lets a test prove it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from mmrlhf.data.media import encode_png
from mmrlhf.data.schema import RECORD_SCHEMA, to_table, write_table

PROMPT = "What number is written?"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("sft", "feedback", "val", "test")
_WORD_TO_DIGIT = {word: str(digit) for digit, word in enumerate(DIGIT_WORDS)}
THEN = "then"  # joins the digits of a clip summary
_SCAN_PX = 8  # side of one UCI scan
_SCAN_LEVELS = 16.0  # scans hold gray levels 0..16


@dataclass
class DigitsSpec:
    """Every knob of the digits data set; the same spec and seed give byte-identical tables.

    Geometry is in pixels of the square grayscale canvas (white digits on black, as the scans).
    scale_range: per-digit size as a multiple of the 8 px scan (bilinear). max_rotation_deg:
    each digit is rotated uniformly in +/- this. max_gap / max_jitter: random horizontal gap
    between digits and vertical offset of each digit. noise_std: additive Gaussian noise in
    gray levels (0..255). n_*: records per split. pool_fractions: the share of the 1,797 scans
    in each split's pool (positive, summing to 1).
    """

    seed: int = 0
    canvas: int = 64
    min_digits: int = 3
    max_digits: int = 5
    scale_range: tuple[float, float] = (2.5, 3.5)
    max_rotation_deg: float = 5.0
    max_gap: int = 3
    max_jitter: int = 4
    noise_std: float = 8.0
    n_sft: int = 900
    n_feedback: int = 2000
    n_val: int = 300
    n_test: int = 500
    pool_fractions: dict[str, float] = field(
        # val and test pools stay at a few hundred scans (270 and 359) so error bars are tight
        default_factory=lambda: {"sft": 0.25, "feedback": 0.40, "val": 0.15, "test": 0.20}
    )

    def __post_init__(self):
        lo, hi = self.scale_range
        fractions = self.pool_fractions
        checks = [  # (holds, field, allowed values, actual value)
            (1 <= self.min_digits <= self.max_digits, "min_digits/max_digits",
             "1 <= min_digits <= max_digits", (self.min_digits, self.max_digits)),
            # each digit keeps at least its scanned 8 px before the fit-to-canvas shrink
            (self.canvas >= _SCAN_PX * self.max_digits, "canvas", "canvas >= 8 * max_digits",
             self.canvas),
            (0 < lo <= hi, "scale_range", "0 < low <= high", self.scale_range),
            (self.max_rotation_deg >= 0, "max_rotation_deg", ">= 0", self.max_rotation_deg),
            (self.max_gap >= 0, "max_gap", ">= 0", self.max_gap),
            (self.max_jitter >= 0, "max_jitter", ">= 0", self.max_jitter),
            (self.noise_std >= 0, "noise_std", ">= 0", self.noise_std),
            (min(self.counts.values()) >= 0, "n_sft/n_feedback/n_val/n_test", ">= 0",
             self.counts),
            (set(fractions) == set(SPLITS) and all(f > 0 for f in fractions.values())
             and math.isclose(sum(fractions.values()), 1.0),
             "pool_fractions", f"positive values for {SPLITS} summing to 1", fractions),
        ]
        for holds, name, allowed, value in checks:
            if not holds:
                raise ValueError(f"DigitsSpec.{name}: must be {allowed}, got {value}")

    @property
    def counts(self) -> dict[str, int]:
        """Records to build per split, keyed like SPLITS."""
        return {"sft": self.n_sft, "feedback": self.n_feedback, "val": self.n_val,
                "test": self.n_test}


def digits_to_words(digits: str) -> str:
    """"417" -> "four one seven". Raises ValueError naming any character that is not 0-9."""
    bad = [ch for ch in digits if ch not in "0123456789"]
    if bad:
        raise ValueError(f"digits_to_words: {digits!r} holds non-digit character {bad[0]!r}")
    return " ".join(DIGIT_WORDS[int(ch)] for ch in digits)


def words_to_digits(words: str) -> str:
    """"four one seven" -> "417"; whitespace-separated, case-sensitive, unknown words -> "?"."""
    return "".join(_WORD_TO_DIGIT.get(word, "?") for word in words.split())


def summary_to_digits(summary: str) -> str:
    """A clip summary "four then one then seven" -> "417" (the video task, `mmrlhf.data.digits_video`).

    Words alternate: a digit word, then ``"then"``; an unknown word in a digit's place or any other
    word in a ``"then"``'s place reads as "?" (so "four one" -> "4?"), a trailing "then" is ignored.
    """
    return "".join(_WORD_TO_DIGIT.get(word, "?") if i % 2 == 0 else ("" if word == THEN else "?")
                   for i, word in enumerate(summary.split()))


def is_summary(text: str) -> bool:
    """Whether ``text`` is a clip summary of two or more digits ("four then one")."""
    words = text.split()
    return len(words) >= 3 and "?" not in summary_to_digits(text)


def exact_match(response: str, reference: str) -> bool:
    """True when the texts are equal after collapsing runs of whitespace and trimming."""
    return response.split() == reference.split()


def gold_score(response: str, reference: str) -> float:
    """Oracle score in [0, 1] of a response against the reference digit words.

    With r = words_to_digits(response) and g = words_to_digits(reference):
        score = (#{i < min(|r|, |g|) : r[i] == g[i]} / |g|) * exp(-| |r| - |g| | / |g|)
    i.e. per-position digit accuracy over the reference length times a length penalty. It is 1.0
    iff exact_match(response, reference) (for a summary, up to a trailing "then"); e.g. "four one"
    vs "four one seven" scores (2/3) * exp(-1/3) = 0.478. A reference that is a clip summary
    (:func:`is_summary`, "four then one then seven", the video task) reads both texts with
    :func:`summary_to_digits`, so a missing "then" costs a digit: "four one seven" against it is
    "4?7" vs "417", 2/3. Raises ValueError when the reference is not digit words nor a summary.
    """
    parse = summary_to_digits if is_summary(reference) else words_to_digits
    truth = parse(reference)
    if not truth or "?" in truth:
        raise ValueError(f"gold_score: reference {reference!r} must be digit words")
    guess = parse(response)
    hits = sum(a == b for a, b in zip(guess, truth))
    return hits / len(truth) * math.exp(-abs(len(guess) - len(truth)) / len(truth))


def gold_reward(responses: list[str], references: list[str | None], prompts: list[str]) -> list[float]:
    """:func:`gold_score` as a batched reward function (:mod:`mmrlhf.reward.sources`), for
    ``reward.sources`` as ``mmrlhf.data.digits:gold_reward``.

    responses, references, prompts: (B,) each; the prompts are not used. Returns B scores in
    [0, 1], NaN (unscored) for a record without a reference. Raises ValueError when a reference
    is not digit words.
    """
    return [gold_score(response, reference) if reference else math.nan
            for response, reference in zip(responses, references)]


@functools.lru_cache(maxsize=1)
def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) float32 in [0, 1], labels (N,) int) of the UCI digits, read once."""
    # imported here: sklearn (with scipy) takes about a second to import and is only needed
    # when the data set is built
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / _SCAN_LEVELS).astype(np.float32)
    images.setflags(write=False)  # shared by the cache
    return images, digits.target.astype(np.int64)


def digit_pools(spec: DigitsSpec) -> dict[str, np.ndarray]:
    """Split the scan indices (0..1796) into disjoint, sorted pools keyed like SPLITS.

    One seeded permutation, cut at the cumulative `pool_fractions`. Raises ValueError when a
    pool holds fewer scans than `max_digits` (a record never repeats a scan).
    """
    n_scans = len(load_scans()[1])
    order = np.random.default_rng([spec.seed, 0]).permutation(n_scans)
    fractions = np.array([spec.pool_fractions[split] for split in SPLITS])
    cuts = np.round(np.cumsum(fractions)[:-1] * n_scans).astype(int)
    pools = dict(zip(SPLITS, (np.sort(part) for part in np.split(order, cuts))))
    for split, pool in pools.items():
        if len(pool) < spec.max_digits:
            raise ValueError(f"DigitsSpec.pool_fractions: the {split} pool holds {len(pool)} "
                             f"scans, fewer than max_digits={spec.max_digits}")
    return pools


def build_digits(spec: DigitsSpec) -> dict[str, pa.Table]:
    """Build every split as a RECORD_SCHEMA table, keyed like SPLITS.

    Each split draws from its own seeded stream, so changing one split's count leaves the
    others unchanged. Record ids are "digits-<split>-<index>".
    """
    pools = digit_pools(spec)
    tables = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, index + 1])
        records = [_make_record(f"digits-{split}-{i:05d}", split, pools[split], spec, rng)
                   for i in range(spec.counts[split])]
        tables[split] = to_table(records, RECORD_SCHEMA)
    return tables


def write_digits(spec: DigitsSpec, out_dir: str | Path) -> dict[str, Path]:
    """Build the splits and write each to `out_dir/<split>.parquet` (atomic, validated)."""
    return {split: write_table(table, Path(out_dir) / f"{split}.parquet", RECORD_SCHEMA)
            for split, table in build_digits(spec).items()}


def _make_record(record_id: str, split: str, pool: np.ndarray, spec: DigitsSpec,
                 rng: np.random.Generator) -> dict:
    """One record: a random row of distinct scans from `pool`, rendered and labeled."""
    images, labels = load_scans()
    n_digits = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    scan_ids = rng.choice(pool, size=n_digits, replace=False)
    canvas = render_row(images[scan_ids], spec, rng)
    return {
        "id": record_id,
        "image": encode_png(canvas),
        "prompt": PROMPT,
        "reference": digits_to_words("".join(str(labels[i]) for i in scan_ids)),
        "split": split,
        "scan_ids": [int(i) for i in scan_ids],
    }


def render_row(scans: np.ndarray, spec: DigitsSpec, rng: np.random.Generator) -> np.ndarray:
    """Draw scans (n, 8, 8) in [0, 1] left to right on a (canvas, canvas) uint8 image.

    Each digit is scaled, rotated, separated by a random gap and jittered vertically; when the
    row does not fit, every digit and gap shrinks by the same factor (never cropped). Then
    Gaussian noise is added and the result scaled to 0..255.
    """
    glyphs = [
        _glyph(scan, rng.uniform(*spec.scale_range),
               rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
        for scan in scans
    ]
    gaps = rng.integers(0, spec.max_gap + 1, size=len(glyphs) - 1)
    glyphs, gaps = _fit(glyphs, gaps, spec.canvas)
    ink = _place(glyphs, gaps, spec, rng)  # (canvas, canvas) in [0, 1]
    noisy = ink * 255.0 + rng.normal(0.0, spec.noise_std, size=ink.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _glyph(scan: np.ndarray, scale: float, angle_deg: float) -> np.ndarray:
    """One scan resized (bilinear) to round(8 * scale) px and rotated, its box grown to fit."""
    side = max(1, round(_SCAN_PX * scale))
    image = Image.fromarray(scan).resize((side, side), Image.Resampling.BILINEAR)
    image = image.rotate(angle_deg, Image.Resampling.BILINEAR, expand=True, fillcolor=0.0)
    return np.asarray(image)


def _fit(glyphs: list[np.ndarray], gaps: np.ndarray, canvas: int):
    """Shrink glyphs and gaps by one factor so the row fits the canvas; flooring keeps it <=."""
    width = sum(g.shape[1] for g in glyphs) + int(gaps.sum())
    height = max(g.shape[0] for g in glyphs)
    factor = min(1.0, canvas / width, canvas / height)
    if factor == 1.0:
        return glyphs, gaps
    resized = [
        np.asarray(Image.fromarray(g).resize(
            (max(1, math.floor(g.shape[1] * factor)), max(1, math.floor(g.shape[0] * factor))),
            Image.Resampling.BILINEAR))
        for g in glyphs
    ]
    return resized, np.floor(gaps * factor).astype(int)


def _place(glyphs: list[np.ndarray], gaps: np.ndarray, spec: DigitsSpec,
           rng: np.random.Generator) -> np.ndarray:
    """Paste the row at a random horizontal offset, each glyph vertically jittered."""
    ink = np.zeros((spec.canvas, spec.canvas), dtype=np.float32)
    width = sum(g.shape[1] for g in glyphs) + int(gaps.sum())
    x = int(rng.integers(0, spec.canvas - width + 1))
    for glyph, gap in zip(glyphs, [*gaps, 0]):
        h, w = glyph.shape
        jitter = int(rng.integers(-spec.max_jitter, spec.max_jitter + 1))
        y = min(max((spec.canvas - h) // 2 + jitter, 0), spec.canvas - h)
        # max, not overwrite: a rotated glyph's empty corners must not erase its neighbour
        np.maximum(ink[y:y + h, x:x + w], glyph, out=ink[y:y + h, x:x + w])
        x += w + int(gap)
    return ink
