"""Arrow schemas of the run directory's Parquet files, with validated, atomic reads and writes.

Every stage reads and writes its data through `write_table` / `read_table`, so a malformed
record fails at the stage that made it, with its id and field, not three stages later.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # encoded PNG bytes; a video's first frame
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=True),  # None where no label exists
        # every reference of the image (COCO: all its captions), `reference` first; None where
        # there is only `reference` (the digits task; files written before this field existed)
        pa.field("references", pa.list_(pa.string()), nullable=True),
        pa.field("split", pa.string(), nullable=False),
        pa.field("scan_ids", pa.list_(pa.int32()), nullable=True),  # digits source scans
        # encoded video bytes (mp4, webm, ...; mmrlhf.data.video); None for an image record
        pa.field("video", pa.binary(), nullable=True),
    ]
)

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # RECORD_SCHEMA id
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "simulated", "import:<kind>", "web"
        # provenance (PreferencePair); null where the source does not say or in older files
        pa.field("origin", pa.string()),
        pa.field("chosen_model", pa.string()),
        pa.field("rejected_model", pa.string()),
        pa.field("aspect_scores", pa.string()),
        pa.field("rationale", pa.string()),
    ]
)

# Keys of a record: an empty one would silently merge or orphan records downstream.
_NON_EMPTY_FIELDS = ("id", "prompt", "prompt_id")
_ID_FIELDS = ("id", "prompt_id")

# pyarrow would silently turn str into binary and bytes into string (a path stored as image)
_PYTHON_TYPES = {pa.string(): str, pa.binary(): (bytes, bytearray, memoryview)}
# Arrow casts that keep a value's meaning; others (int -> string, string -> binary) would hide
# a wrong column
_CAST_KINDS = (
    pa.types.is_integer,
    lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
    lambda t: pa.types.is_list(t) or pa.types.is_large_list(t),
)
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError)

Records = Sequence[Mapping[str, Any]]


def to_table(table_or_records: pa.Table | Records, schema: pa.Schema) -> pa.Table:
    """Validate rows against `schema` and return them as a table with exactly that schema.

    table_or_records: a pyarrow Table (columns may be in any order and of castable types, e.g.
    list<int64> for list<int32>) or a sequence of dicts, one per record.
    Raises ValueError naming the record (its id, else its row number) and the field when a
    field is missing or unknown, a value has the wrong type, a non-nullable field is null, or
    an id/prompt field is empty or only whitespace.
    """
    if isinstance(table_or_records, pa.Table):
        table = _conform_table(table_or_records, schema)
    else:
        table = _records_to_table(table_or_records, schema)
    _check_values(table, schema)
    return table


def record_references(table: pa.Table) -> list[list[str] | None]:
    """Every reference of each record of a RECORD_SCHEMA table, in row order.

    Returns one list a row: the `references` column where it is set, else `[reference]`, else
    None (an unlabeled record). Metrics over several references (multi-reference BLEU, ROUGE-L
    max over references, CIDEr) read them here.
    """
    singles = table.column("reference").to_pylist()
    lists = table.column("references").to_pylist()
    return [many or ([one] if one is not None else None) for one, many in zip(singles, lists)]


def write_table(table_or_records: pa.Table | Records, path: str | Path, schema: pa.Schema) -> Path:
    """Validate (see `to_table`) and write a Parquet file atomically; returns the path.

    The rows go to a temporary file in the destination folder, which then replaces `path` with
    `os.replace` (atomic on POSIX and Windows), so a failed write leaves no file behind and an
    existing file untouched. Parent folders are created. Raises ValueError as `to_table` does.
    """
    table = to_table(table_or_records, schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name rather than mkstemp, whose 0600 mode would carry over to the final file
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file written by `write_table` and check it against `schema`.

    Returns a table with exactly `schema` (columns in schema order). Raises FileNotFoundError
    when `path` does not exist, ValueError (naming the path, and the field or record) when it
    is not Parquet or its contents do not match the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Parquet file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
    try:
        return to_table(table, schema)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _record_name(record: Mapping[str, Any], row: int) -> str:
    """How errors name a record: 'record <id>' when it has a usable id, else its row."""
    for key in _ID_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and value:
            return f"record {value}"
    return f"record at row {row}"


def _records_to_table(records: Records, schema: pa.Schema) -> pa.Table:
    """Check each record's keys, then build one Arrow column per field."""
    names = set(schema.names)
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record at row {row}: expected a dict, got {type(record).__name__}")
        missing = [f.name for f in schema if not f.nullable and f.name not in record]
        unknown = sorted(set(record) - names)
        if missing or unknown:
            what = f"missing field '{missing[0]}'" if missing else f"unknown field '{unknown[0]}'"
            raise ValueError(f"{_record_name(record, row)}: {what}")
    columns = [_column(records, field) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(records: Records, field: pa.Field) -> pa.Array:
    """One column; on a type error, convert value by value to find and name the culprit."""
    values = [record.get(field.name) for record in records]
    try:
        return _convert(values, field.type)
    except _CONVERSION_ERRORS:
        for row, value in enumerate(values):
            try:
                _convert([value], field.type)
            except _CONVERSION_ERRORS as err:
                raise ValueError(
                    f"{_record_name(records[row], row)}: field '{field.name}' must be "
                    f"{field.type}, got {type(value).__name__} ({err})"
                ) from err
        raise  # every value converts alone; not one record's fault, so no record to name


def _convert(values: list, type_: pa.DataType) -> pa.Array:
    """pa.array, refusing str for binary and bytes for string (see _PYTHON_TYPES)."""
    strict = _PYTHON_TYPES.get(type_)
    if strict is not None and not all(v is None or isinstance(v, strict) for v in values):
        raise TypeError("no implicit conversion between str and bytes")
    return pa.array(values, type=type_)


def _conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast a table's columns to `schema`; names the first missing/unknown field.

    A missing nullable field becomes a column of nulls, so files written before a field was
    added (e.g. `references`) stay readable.
    """
    missing = [f.name for f in schema if not f.nullable and f.name not in table.column_names]
    unknown = [name for name in table.column_names if name not in schema.names]
    if missing or unknown:
        what = f"missing field '{missing[0]}'" if missing else f"unknown field '{unknown[0]}'"
        raise ValueError(f"table: {what}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        wrong = f"table: field '{field.name}' must be {field.type}, got {column.type}"
        if not _castable(column.type, field.type):
            raise ValueError(wrong)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:  # e.g. int32 overflow
            raise ValueError(f"{wrong} ({err})") from err
    return pa.Table.from_arrays(columns, schema=schema)


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """True for an all-null column or a cast within one of _CAST_KINDS (lists: elementwise)."""
    if pa.types.is_null(source):
        return True
    if not any(kind(source) and kind(target) for kind in _CAST_KINDS):
        return False
    return not pa.types.is_list(target) or _castable(source.value_type, target.value_type)


def _check_values(table: pa.Table, schema: pa.Schema) -> None:
    """Raise ValueError for the first null in a non-nullable field or empty id/prompt."""
    for field in schema:
        column = table.column(field.name)
        bad = pc.is_null(column) if not field.nullable else None
        if field.name in _NON_EMPTY_FIELDS:
            empty = pc.equal(pc.utf8_trim_whitespace(column), "")
            bad = empty if bad is None else pc.or_kleene(bad, empty)
        if bad is None or not pc.any(bad).as_py():
            continue
        row = pc.index(bad, True).as_py()
        problem = "is null" if column[row].as_py() is None else "is empty"
        ids = {key: table.column(key)[row].as_py() for key in _ID_FIELDS if key in schema.names}
        raise ValueError(f"{_record_name(ids, row)}: field '{field.name}' {problem}")
