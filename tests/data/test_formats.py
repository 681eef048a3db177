import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrlhf.data.formats import read_coco_captions, read_llava_json, read_manifest
from mmrlhf.data.media import decode_image, encode_png
from mmrlhf.data.schema import RECORD_SCHEMA

GRAY = np.arange(48, dtype=np.uint8).reshape(6, 8)


@pytest.fixture
def images(tmp_path):
    """tmp_path/img with a good PNG, a corrupt file and an empty file; no missing.png."""
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "good.png").write_bytes(encode_png(GRAY))
    (folder / "corrupt.png").write_bytes(b"\x89PNG but then garbage")
    (folder / "empty.png").write_bytes(b"")
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_manifest_keeps_good_records_and_reports_broken_images(tmp_path, images):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "rel", "image": "img/good.png", "prompt": "What is it?", "reference": "gray"},
        {"id": "abs", "image": str(images / "good.png"), "prompt": "And this?"},
        {"id": "bad", "image": "img/corrupt.png", "prompt": "?"},
        {"id": "zero", "image": "img/empty.png", "prompt": "?"},
        {"id": "lost", "image": "img/missing.png", "prompt": "?"},
        {"id": "web", "image": "https://example.com/x.png", "prompt": "?"},
        {"id": "tag", "image": "img/good.png", "prompt": "What does <image> mean in HTML?"},
        {"id": "rel", "image": "img/good.png", "prompt": "Same id again?"},
    ])
    table, report = read_manifest(manifest, split="val")
    assert table.schema == RECORD_SCHEMA
    assert table["id"].to_pylist() == ["rel", "abs"]
    assert table["reference"].to_pylist() == ["gray", None]
    assert set(table["split"].to_pylist()) == {"val"}
    np.testing.assert_array_equal(decode_image(table["image"][0].as_py(), "rel"), GRAY)
    assert report.n_read == 8 and report.n_skipped == 6
    assert report.skipped[-1] == ("rel", "duplicate id; the first record with it was kept")
    reasons = dict(report.skipped[:-1])
    assert list(reasons) == ["bad", "zero", "lost", "web", "tag"]
    assert "1 literal <image>" in reasons["tag"]
    assert "not a recognised image format" in reasons["bad"]
    assert "empty" in reasons["zero"]
    assert "missing.png not found" in reasons["lost"]
    assert "refused unless data.allow_urls=true" in reasons["web"]


def test_manifest_reference_may_be_a_list_of_references(tmp_path, images):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "one", "image": "img/good.png", "prompt": "?", "reference": "gray"},
        {"id": "many", "image": "img/good.png", "prompt": "?", "reference": ["a ramp", "gray shades"]},
    ])
    table, _ = read_manifest(manifest)
    assert table["reference"].to_pylist() == ["gray", "a ramp"]
    assert table["references"].to_pylist() == [["gray"], ["a ramp", "gray shades"]]
    write_jsonl(manifest, [{"id": "x", "image": "img/good.png", "prompt": "?", "reference": ["ok", 3]}])
    with pytest.raises(ValueError, match=r"m.jsonl line 1 \(record x\): field 'reference' must be a string or a "
                                         "non-empty list of strings"):
        read_manifest(manifest)


def test_parquet_manifest_accepts_image_bytes_or_paths(tmp_path, images):
    png = encode_png(GRAY)
    noise = encode_png(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    pq.write_table(pa.Table.from_pylist([
        {"id": "bytes", "image": png, "prompt": "p1"},
        {"id": "trunc", "image": noise[: len(noise) // 2], "prompt": "p2"},
    ]), tmp_path / "bytes.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "path", "image": "img/good.png", "prompt": "p3"}]),
                   tmp_path / "paths.parquet")
    table, report = read_manifest(tmp_path / "bytes.parquet")
    assert table["id"].to_pylist() == ["bytes"]
    assert report.skipped[0][0] == "trunc" and "truncated" in report.skipped[0][1]
    table, report = read_manifest(tmp_path / "paths.parquet")
    assert table["id"].to_pylist() == ["path"] and report.n_skipped == 0


@pytest.mark.parametrize(
    "row, message",
    [
        ({"id": "r1", "image": "img/good.png"},
         r"m.jsonl line 2 \(record r1\): missing field 'prompt'"),
        ({"id": "r1", "image": "img/good.png", "prompt": " "},
         "line 2 .*'prompt' must be a non-empty"),
        ({"image": "img/good.png", "prompt": "p"}, "line 2: missing field 'id'"),
        ({"id": "r1", "image": 7, "prompt": "p"}, "line 2 .*'image' must be a file path"),
    ],
)
def test_malformed_manifest_fails_naming_line_and_field(tmp_path, images, row, message):
    good = {"id": "r0", "image": "img/good.png", "prompt": "p"}
    with pytest.raises(ValueError, match=message):
        read_manifest(write_jsonl(tmp_path / "m.jsonl", [good, row]))


def test_manifest_with_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"m.csv: manifest must end in .jsonl or .parquet"):
        read_manifest(tmp_path / "m.csv")


def test_coco_captions_give_one_record_per_image_with_all_its_captions(tmp_path, images):
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "good.png"}, {"id": 2, "file_name": "corrupt.png"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A gray ramp."},
            {"id": 11, "image_id": 1, "caption": "Shades of gray. "},
            {"id": 12, "image_id": 2, "caption": "Broken."},
            {"id": 13, "image_id": 9, "caption": "Orphan."},
            {"id": 14, "image_id": 1, "caption": "  "},
        ],
    }))
    table, report = read_coco_captions(images, annotations, prompt="Caption it.")
    assert table["id"].to_pylist() == ["coco-1"]
    assert table["reference"].to_pylist() == ["A gray ramp."]
    assert table["references"].to_pylist() == [["A gray ramp.", "Shades of gray."]]
    assert set(table["prompt"].to_pylist()) == {"Caption it."}
    assert report.n_read == 4  # two captions skipped before grouping, then two images
    assert [rid for rid, _ in report.skipped] == ["coco-9-13", "coco-1-14", "coco-2"]
    assert "image_id 9" in report.skipped[0][1] and "empty" in report.skipped[1][1]


def test_coco_file_without_annotations_is_refused(tmp_path, images):
    (tmp_path / "c.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="c.json: missing list 'annotations'"):
        read_coco_captions(images, tmp_path / "c.json")


def llava(record_id, human, gpt="It is gray.", image="good.png"):
    entry = {"id": record_id, "conversations": [{"from": "human", "value": human},
                                                {"from": "gpt", "value": gpt}]}
    if image is not None:
        entry["image"] = image
    return entry


def test_llava_json_checks_the_image_placeholder(tmp_path, images):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([
        llava("ok", "<image>\nWhat colour is it?"),
        llava("after", "What colour is it?\n<image>"),
        llava("twice", "<image>\n<image>\nCompare."),
        llava("none", "What colour is it?"),
        llava("text", "Tell me a joke.", image=None),
        llava("literal", "What does <image> mean in HTML?", image=None),
        llava("only", "<image>"),
        llava("broken", "<image>\nWhat?", image="corrupt.png"),
    ]))
    table, report = read_llava_json(path, images)
    assert table["id"].to_pylist() == ["ok", "after"]
    assert table["prompt"].to_pylist() == ["What colour is it?"] * 2
    assert table["reference"].to_pylist() == ["It is gray."] * 2
    reasons = dict(report.skipped)
    assert list(reasons) == ["twice", "none", "text", "literal", "only", "broken"]
    assert "2 <image> placeholders, expected exactly 1" in reasons["twice"]
    assert "0 <image> placeholders" in reasons["none"]
    assert "text-only record (no image)" in reasons["text"]
    assert "literal <image>" in reasons["literal"]
    assert "prompt is empty" in reasons["only"]
    assert report.n_read == 8 and report.n_skipped == 6


def test_llava_entry_without_conversations_fails_the_read(tmp_path, images):
    (tmp_path / "l.json").write_text(json.dumps([{"id": "x", "image": "good.png"}]))
    with pytest.raises(ValueError, match=r"l.json \(record x\): missing field 'conversations'"):
        read_llava_json(tmp_path / "l.json", images)
