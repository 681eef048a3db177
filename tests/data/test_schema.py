import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrlhf.data.media import encode_png
from mmrlhf.data.schema import (
    PREFERENCE_SCHEMA,
    RECORD_SCHEMA,
    read_table,
    record_references,
    to_table,
    write_table,
)

PNG = encode_png(np.zeros((4, 4), dtype=np.uint8))


def record(record_id="r1", **overrides):
    row = {"id": record_id, "image": PNG, "prompt": "What number is written?",
           "reference": "one", "references": None, "split": "sft", "scan_ids": [1, 2], "video": None}
    row.update(overrides)
    return row


def test_records_round_trip_through_parquet(tmp_path):
    rows = [record("a"), record("b", reference=None, scan_ids=None)]
    path = write_table(rows, tmp_path / "sub" / "x.parquet", RECORD_SCHEMA)
    table = read_table(path, RECORD_SCHEMA)
    assert table.schema == RECORD_SCHEMA
    assert table.to_pylist() == rows


def test_file_written_before_references_existed_reads_back_with_its_single_reference(tmp_path):
    old = {k: [v] for k, v in record().items() if k != "references"}
    pq.write_table(pa.table(old), tmp_path / "old.parquet")
    table = read_table(tmp_path / "old.parquet", RECORD_SCHEMA)
    assert table.column("references").to_pylist() == [None]
    assert record_references(table) == [["one"]]


def test_record_references_prefer_the_list_and_keep_unlabeled_records_none():
    table = to_table([record("a", references=["one", "uno"]), record("b", reference=None)], RECORD_SCHEMA)
    assert record_references(table) == [["one", "uno"], None]


def test_table_with_castable_types_and_other_column_order_is_conformed():
    table = pa.table({"scan_ids": pa.array([[3]], pa.list_(pa.int64())),
                      **{k: [v] for k, v in record().items() if k != "scan_ids"}})
    assert to_table(table, RECORD_SCHEMA).schema == RECORD_SCHEMA


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": None}, "record r1: field 'prompt' is null"),
        ({"prompt": "  "}, "record r1: field 'prompt' is empty"),
        ({"image": "not bytes"}, "record r1: field 'image' must be binary"),
        ({"scan_ids": ["x"]}, "record r1: field 'scan_ids' must be list<item: int32>"),
        ({"colour": "red"}, "record r1: unknown field 'colour'"),
    ],
)
def test_bad_record_is_named_with_its_field(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_table([record("r0"), record(**bad)], tmp_path / "x.parquet", RECORD_SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_missing_field_raises_and_leaves_existing_file_untouched(tmp_path):
    path = write_table([record("old")], tmp_path / "x.parquet", RECORD_SCHEMA)
    before = path.read_bytes()
    broken = record("r7")
    del broken["split"]
    with pytest.raises(ValueError, match="record r7: missing field 'split'"):
        write_table([broken], path, RECORD_SCHEMA)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def write_half_then_fail(table, where):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_table([record()], tmp_path / "x.parquet", RECORD_SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_empty_id_in_a_table_is_named_by_row():
    table = pa.table({"prompt_id": ["p1", ""], "chosen": ["a", "b"], "rejected": ["c", "d"],
                      "annotator": ["sim", "sim"], "source": ["simulated", "simulated"]})
    with pytest.raises(ValueError, match="record at row 1: field 'prompt_id' is empty"):
        to_table(table, PREFERENCE_SCHEMA)


def test_read_table_names_the_path_when_missing_or_mismatched(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_table(tmp_path / "nope.parquet", RECORD_SCHEMA)
    pairs = tmp_path / "pairs.parquet"
    write_table([{"prompt_id": "p", "chosen": "a", "rejected": "b", "annotator": "sim",
                  "source": "simulated"}], pairs, PREFERENCE_SCHEMA)
    with pytest.raises(ValueError, match=r"pairs.parquet: table: missing field 'id'"):
        read_table(pairs, RECORD_SCHEMA)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet: not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", RECORD_SCHEMA)


def test_table_column_of_the_wrong_kind_is_not_cast():
    columns = {k: [v] for k, v in record().items()}
    columns["image"] = ["img/0.png"]  # a path where PNG bytes belong
    with pytest.raises(ValueError, match="table: field 'image' must be binary, got string"):
        to_table(pa.table(columns), RECORD_SCHEMA)
