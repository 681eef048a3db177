"""Readers for users' multimodal data: JSONL/Parquet manifests, COCO captions, LLaVA JSON.

Each returns (table in RECORD_SCHEMA, ReadReport). Two kinds of trouble are kept apart:
a malformed file (a record without an id or prompt, invalid JSON) is the user's error and
fails the whole read with a ValueError naming the line/record and field; a broken image or
an unusable record inside a well-formed file is data noise, skipped and listed in the report
with its record id and reason. Kept images are decoded (validated) and re-encoded as PNG.

`read_rows` (JSONL, CSV or Parquet rows, each named by its line or row for error messages) and
`require_field` also serve other user files, e.g. the human feedback of
:mod:`mmrlhf.feedback.importer`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mmrlhf.data.media import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    MediaLimits,
    decode_image,
    encode_png,
    read_image_source,
)
from mmrlhf.data.schema import RECORD_SCHEMA, to_table
from mmrlhf.data.video import decode_video, read_video_source

IMAGE_PLACEHOLDER = "<image>"  # LLaVA's marker for where the image goes in the human turn
ROW_FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")  # what `read_rows` reads by default
JSON_LIST_SUFFIX = ".json"  # a JSON list of objects, as published data sets ship; `read_rows` on request


@dataclass
class ReadReport:
    """What a reader did: `n_read` source records examined, `skipped` (record_id, reason)."""

    n_read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Records dropped; the table holds n_read - n_skipped rows."""
        return len(self.skipped)


@dataclass
class _Candidate:
    """A parsed source record before its image is read; `image` is bytes or a path/URL, or None
    when `video` (bytes, a video file or a folder of frames) is given instead."""

    id: str
    image: str | bytes | None
    prompt: str
    references: list[str] | None  # None where unlabeled; the first is the record's `reference`
    video: str | bytes | None = None


class _Skip(Exception):
    """Raised by a parser for a record that is data noise: skipped and reported."""

    def __init__(self, record_id: str, reason: str):
        super().__init__(reason)
        self.record_id = record_id
        self.reason = reason


def read_manifest(
    path: str | Path,
    *,
    split: str = "train",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
    media: MediaLimits | None = None,
) -> tuple[pa.Table, ReadReport]:
    """Read a manifest: `.jsonl` (one JSON object a line) or `.parquet`, chosen by extension.

    Fields: `id` and `prompt` (non-empty strings), `image` (a path relative to the manifest's
    folder, an absolute path, an http(s) URL when `allow_urls`, or bytes in Parquet) or instead
    `video` (a video file such as .mp4/.webm, a folder of frame images, or bytes in Parquet),
    optional `reference` (a string, or a list of strings: several references of one image). Raises
    ValueError naming the line (JSONL) or row (Parquet), the record and the
    field when a field is missing, empty or of the wrong type, and for any other extension.
    Records whose image or video cannot be read or decoded (corrupt, truncated, no frame, above
    the pixel cap; decoded with `media`, default `MediaLimits(max_pixels)`) are skipped and reported.
    """
    path = Path(path)
    rows = read_rows(path, "manifest", suffixes=(".jsonl", ".parquet"))
    return _collect(rows, lambda row: _manifest_candidate(*row), base_dir=path.parent,
                    split=split, max_pixels=max_pixels, allow_urls=allow_urls,
                    media=media or MediaLimits(max_pixels))


def read_coco_captions(
    image_dir: str | Path,
    annotations_json: str | Path,
    prompt: str = "Describe the image.",
    *,
    split: str = "train",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
) -> tuple[pa.Table, ReadReport]:
    """Read COCO captions (`captions_*.json`: "images" with id/file_name, "annotations" with
    id/image_id/caption): one record per image, id "coco-<image_id>", the same `prompt` for all,
    all its captions as `references` (annotation order; the first is `reference`). Follows the
    COCO 2014/2017 format; images without a caption give no record.

    Raises ValueError naming the file when it lacks "images"/"annotations" or an entry lacks
    a field. Captions of an unknown image_id, empty captions and unreadable images are skipped
    and reported (a caption as "coco-<image_id>-<annotation id>").
    """
    annotations_json = Path(annotations_json)
    coco = _load_json(annotations_json)
    for key in ("images", "annotations"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise ValueError(f"{annotations_json}: missing list '{key}' of a COCO captions file")
    files = {require_field(annotations_json, img, "id"): require_field(annotations_json, img, "file_name")
             for img in coco["images"]}
    captions: dict[Any, list[str]] = {}
    report = ReadReport()
    for ann in coco["annotations"]:
        image_id = require_field(annotations_json, ann, "image_id")
        caption_id = f"coco-{image_id}-{require_field(annotations_json, ann, 'id')}"
        caption = str(require_field(annotations_json, ann, "caption")).strip()
        if image_id not in files:
            report.skipped.append((caption_id, f"caption refers to image_id {image_id}, not in 'images'"))
        elif not caption:
            report.skipped.append((caption_id, "caption is empty"))
        else:
            captions.setdefault(image_id, []).append(caption)
    report.n_read = len(report.skipped)

    def parse(item: tuple[Any, list[str]]) -> _Candidate:
        image_id, refs = item
        return _Candidate(f"coco-{image_id}", files[image_id], prompt, refs)

    return _collect(captions.items(), parse, base_dir=Path(image_dir), split=split,
                    max_pixels=max_pixels, allow_urls=allow_urls, report=report)


def read_llava_json(
    path: str | Path,
    image_dir: str | Path,
    *,
    split: str = "train",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
) -> tuple[pa.Table, ReadReport]:
    """Read LLaVA-style instruction JSON: a list of {"id", "image", "conversations": [{"from":
    "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}]} (the
    LLaVA-1.5 format). The first human turn, without its `<image>` placeholder, is the prompt;
    the first gpt turn is the reference; `image` is a file name under `image_dir`.

    Skipped and reported: a record whose human turn does not hold exactly one `<image>`
    placeholder (the model inserts image tokens there, so zero or two would misplace them),
    text-only records (no image; a literal `<image>` in one is named as such), records with
    a list of images, without a human or gpt turn, or with an empty prompt, and unreadable
    images. Raises ValueError naming the file and entry when the file is not a JSON list or an
    entry lacks "id" or a "conversations" list.
    """
    path = Path(path)
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: a LLaVA file must hold a JSON list of records")
    return _collect(entries, functools.partial(_llava_candidate, path), base_dir=Path(image_dir),
                    split=split, max_pixels=max_pixels, allow_urls=allow_urls)


def read_rows(
    path: str | Path,
    what: str,
    *,
    suffixes: Sequence[str] = ROW_FILE_SUFFIXES,
    text_columns: Iterable[str] = (),
) -> Iterator[tuple[str, Any]]:
    """The rows of a user's table file as ``(where, row dict)``, the reader chosen by suffix.

    `.jsonl`: one JSON object a line, `where` = "<path> line <n>" (from 1; blank lines
    skipped). `.json` (when in `suffixes`): a JSON list, `where` = "<path> entry <i>" (from 0). `.csv` (pyarrow.csv, header line first) and `.parquet` (pyarrow): `where` =
    "<path> row <i>" (from 0, header not counted). In CSV the `text_columns` are read as text
    rather than inferred (an id "007" stays "007") and an empty cell is None.
    `what` names the file in errors ("manifest", "feedback file").

    Raises FileNotFoundError when `path` does not exist; ValueError naming the path when its
    suffix is not one of `suffixes` or pyarrow cannot parse it, and naming the line for invalid
    JSON (while iterating).
    """
    path = Path(path)
    if path.suffix not in suffixes:
        raise ValueError(f"{path}: {what} must end in {' or '.join(suffixes)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    if path.suffix == ".jsonl":
        return jsonl_rows(path)
    if path.suffix == JSON_LIST_SUFFIX:
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: a .json {what} must hold a JSON list of entries, got {type(entries).__name__}")
        return ((f"{path} entry {i}", entry) for i, entry in enumerate(entries))
    try:
        if path.suffix == ".csv":
            options = pa_csv.ConvertOptions(column_types={name: pa.string() for name in text_columns},
                                            strings_can_be_null=True, null_values=[""])
            table = pa_csv.read_csv(path, convert_options=options)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable {path.suffix[1:]} {what} ({err})") from err
    return ((f"{path} row {i}", row) for i, row in enumerate(table.to_pylist()))


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ("<path> line <n>", object) for each non-blank line of a JSONL file.

    Raises ValueError naming the line when it is not valid JSON.
    """
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path} line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON ({err})") from err


def require_field(where: Path | str, entry: Any, key: str) -> Any:
    """entry[key], or ValueError naming the place, the entry's id (if any) and the field.

    `where` names the file and line/row; a value of None counts as missing.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if entry.get(key) is None:
        name = f" (record {entry['id']})" if "id" in entry else ""
        raise ValueError(f"{where}{name}: missing field '{key}'")
    return entry[key]


def _collect(
    entries: Iterable[Any],
    parse: Callable[[Any], _Candidate],
    *,
    base_dir: Path,
    split: str,
    max_pixels: int,
    allow_urls: bool,
    report: ReadReport | None = None,
    media: MediaLimits | None = None,
) -> tuple[pa.Table, ReadReport]:
    """parse() each entry, then read, validate and re-encode its image (a video: read and
    decoded with `media` to validate it, kept as read, its first frame as the image).

    `parse` raises ValueError for a malformed entry (ends the read) or _Skip for data noise;
    skips and undecodable images are added to `report` (a new one by default) and the rest
    become RECORD_SCHEMA rows.
    """
    report = report or ReadReport()
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    png_by_source: dict[str, bytes] = {}  # manifest records may share an image: decode it once
    for entry in entries:
        report.n_read += 1
        try:
            candidate = parse(entry)
            if candidate.id in seen:
                raise _Skip(candidate.id, "duplicate id; the first record with it was kept")
            if candidate.video is None:
                png, video = _png(candidate, png_by_source, base_dir, max_pixels, allow_urls), None
            else:
                png, video = _video(candidate, base_dir, media or MediaLimits(max_pixels))
        except (_Skip, ImageDecodeError) as err:
            report.skipped.append((err.record_id, err.reason))
            continue
        seen.add(candidate.id)
        refs = candidate.references
        records.append({"id": candidate.id, "image": png, "prompt": candidate.prompt,
                        "reference": refs[0] if refs else None,
                        "references": refs,
                        "split": split, "scan_ids": None, "video": video})
    return to_table(records, RECORD_SCHEMA), report


def _video(candidate: _Candidate, base_dir: Path, media: MediaLimits) -> tuple[bytes, bytes]:
    """(first frame as PNG, encoded video) of a video candidate, decoded once to validate it;
    raises ImageDecodeError."""
    data = read_video_source(candidate.video, candidate.id, base_dir, media)
    return encode_png(decode_video(data, candidate.id, media)[0]), data


def _png(candidate: _Candidate, cache: dict[str, bytes], base_dir: Path, max_pixels: int,
         allow_urls: bool) -> bytes:
    """The candidate's image as validated PNG bytes; raises ImageDecodeError."""
    cacheable = isinstance(candidate.image, str)  # a path or URL, not inline bytes
    if cacheable and candidate.image in cache:
        return cache[candidate.image]
    data = read_image_source(candidate.image, candidate.id, base_dir, allow_urls)
    png = encode_png(decode_image(data, candidate.id, max_pixels))
    if cacheable:
        cache[candidate.image] = png
    return png


def _load_json(path: Path) -> Any:
    """json.load with FileNotFoundError/ValueError that name the path."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _manifest_candidate(where: str, row: Any) -> _Candidate:
    """Check one manifest row's fields; ValueError naming the line, record and field."""
    media_key = "video" if isinstance(row, dict) and row.get("video") is not None else "image"
    values = {key: require_field(where, row, key) for key in ("id", "prompt", media_key)}
    name = f"{where} (record {values['id']})"
    for key in ("id", "prompt"):
        if not isinstance(values[key], str) or not values[key].strip():
            raise ValueError(f"{name}: field '{key}' must be a non-empty string")
    image = values[media_key]
    # empty bytes are a broken image (skipped later); an empty path is a manifest error
    if not isinstance(image, (str, bytes)) or (isinstance(image, str) and not image.strip()):
        raise ValueError(f"{name}: field '{media_key}' must be a file path or {media_key} bytes")
    if media_key == "video" and row.get("image") is not None:
        raise ValueError(f"{name}: fields 'image' and 'video' are both set; a record holds one of them")
    reference = row.get("reference")
    references = [reference] if isinstance(reference, str) else reference
    if references is not None and (not isinstance(references, list) or not references
                                   or not all(isinstance(r, str) for r in references)):
        raise ValueError(f"{name}: field 'reference' must be a string or a non-empty list of strings")
    if IMAGE_PLACEHOLDER in values["prompt"]:
        raise _Skip(values["id"], f"prompt holds {values['prompt'].count(IMAGE_PLACEHOLDER)} literal <image> "
                    "placeholders; the record's one image is placed before the prompt")
    if media_key == "video":
        return _Candidate(values["id"], None, values["prompt"], references, video=image)
    return _Candidate(values["id"], image, values["prompt"], references)


def _llava_candidate(path: Path, entry: Any) -> _Candidate:
    """Turn one LLaVA entry into a candidate; _Skip for unusable records (see read_llava_json)."""
    record_id = str(require_field(path, entry, "id"))
    turns = require_field(path, entry, "conversations")
    if not isinstance(turns, list):
        raise ValueError(f"{path} (record {record_id}): field 'conversations' must be a list")
    human = _first_turn(turns, "human")
    gpt = _first_turn(turns, "gpt")
    image = entry.get("image")
    if image is None:
        literal = any(IMAGE_PLACEHOLDER in str(t.get("value", "")) for t in turns
                      if isinstance(t, dict))
        raise _Skip(record_id, "text-only record holds a literal <image> placeholder" if literal
                    else "text-only record (no image); records need an image")
    if not isinstance(image, str):
        raise _Skip(record_id, "field 'image' must be one file name (multi-image records "
                               "are not supported)")
    if human is None or gpt is None:
        raise _Skip(record_id, f"no {'human' if human is None else 'gpt'} turn")
    count = human.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise _Skip(record_id, f"human turn has {count} <image> placeholders, expected exactly 1")
    prompt = human.replace(IMAGE_PLACEHOLDER, "").strip()
    if not prompt:
        raise _Skip(record_id, "prompt is empty once the <image> placeholder is removed")
    return _Candidate(record_id, image, prompt, [gpt.strip()])


def _first_turn(turns: list, speaker: str) -> str | None:
    """The value of the first turn whose "from" is `speaker`, or None."""
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") == speaker:
            return str(turn.get("value", ""))
    return None
