import numpy as np
import pytest

from mmrlhf.data.media import encode_png
from mmrlhf.data.schema import RECORD_SCHEMA, to_table
from mmrlhf.data.splits import image_groups, split_by_image


def png(value: int) -> bytes:
    return encode_png(np.full((4, 4), value, dtype=np.uint8))


def records(images: list[int]) -> list[dict]:
    return [{"id": f"r{i}", "image": png(v), "prompt": "?", "reference": "x", "split": "train"}
            for i, v in enumerate(images)]


def test_image_groups_join_rows_with_equal_image_bytes_in_first_row_order():
    table = to_table(records([5, 7, 5, 9, 7]), RECORD_SCHEMA)
    assert image_groups(table) == [[0, 2], [1, 4], [3]]


@pytest.mark.parametrize("seed", range(5))
def test_no_image_is_in_two_splits_and_every_record_is_in_one(seed):
    images = [i // 3 for i in range(30)] + list(range(100, 110))  # 10 images x3 records, 10 single
    table = to_table(records(images), RECORD_SCHEMA)
    parts = split_by_image(table, ("a", "b", "c"), (0.5, 0.3, 0.2), seed, "m.jsonl")
    seen = {}
    for name, part in parts.items():
        assert set(part.column("split").to_pylist()) == {name}
        for data in part.column("image").to_pylist():
            assert seen.setdefault(data, name) == name
    ids = sorted(i for part in parts.values() for i in part.column("id").to_pylist())
    assert ids == sorted(f"r{i}" for i in range(40))
    assert [len({*p.column("image").to_pylist()}) for p in parts.values()] == [10, 6, 4]  # 50/30/20% of 20 images


def test_too_few_images_for_every_split_names_the_empty_one():
    table = to_table(records([1, 1, 1, 2]), RECORD_SCHEMA)
    with pytest.raises(ValueError, match=r"m.jsonl: 4 usable records of 2 distinct images leave no image for split c "
                                         r"\(a 1, b 1, c 0 images"):
        split_by_image(table, ("a", "b", "c"), (0.5, 0.3, 0.2), 0, "m.jsonl")
