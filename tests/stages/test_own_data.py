"""A user's own data (captions, not digits): splits, their checks, no gold score, human feedback only."""

import base64
import html
import io
import json
import re
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from mmrlhf.cli import main
from mmrlhf.config import ConfigError, load_config
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.data import SPLITS, load_split, prepare_data
from mmrlhf.stages.eval import run_eval
from mmrlhf.stages.feedback import NO_GOLD_SCORE

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"
SHAPES = [(colour, shape) for shape in ("square", "circle") for colour in ("red", "blue", "green", "white")]


def shape_png(colour: str, shape: str) -> bytes:
    """A 16x16 PNG of one filled shape on black."""
    image = Image.new("RGB", (16, 16))
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)((3, 3, 12, 12), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_manifest(folder: Path, n: int, broken: bool = False) -> Path:
    """`folder/captions.jsonl`: n records with images in `folder`, captioned "a red square" etc."""
    rows = []
    for i, (colour, shape) in enumerate(SHAPES[:n]):
        image = folder / f"{i}.png"
        image.write_bytes(b"not a png" if broken else shape_png(colour, shape))
        rows.append({"id": f"shape-{i}", "image": image.name, "prompt": "Describe the image.",
                     "reference": f"a {colour} {shape}"})
    manifest = folder / "captions.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def own_data(run_dir: Path, path: Path, source: str = "manifest", *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.source={source}", f"data.path={path}", *extra]


def test_only_the_digits_task_has_a_gold_score(tmp_path):
    assert load_config(TINY).data.has_gold_score
    assert not load_config(TINY, own_data(tmp_path, tmp_path / "m.jsonl")).data.has_gold_score


def test_own_records_are_split_25_45_10_20_by_seeded_permutation(tmp_path):
    cfg = load_config(TINY, own_data(tmp_path / "run", write_manifest(tmp_path, 8)))
    prepare_data(cfg)
    ids = {name: load_split(cfg, name).column("id").to_pylist() for name in SPLITS}
    assert {name: len(v) for name, v in ids.items()} == {"sft": 2, "feedback": 4, "val": 1, "test": 1}
    assert sorted(sum(ids.values(), [])) == [f"shape-{i}" for i in range(8)]


def test_manifest_whose_images_are_all_broken_is_an_error_and_writes_nothing(tmp_path):
    manifest = write_manifest(tmp_path, 2, broken=True)
    cfg = load_config(TINY, own_data(tmp_path / "run", manifest))
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}: no usable record \(read 2, skipped 2"):
        prepare_data(cfg)
    assert not RunPaths(cfg.run_dir).data.exists()


def test_too_few_records_for_every_split_is_an_error_naming_the_empty_split(tmp_path):
    manifest = write_manifest(tmp_path, 3)
    cfg = load_config(TINY, own_data(tmp_path / "run", manifest))
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}: 3 usable records of 3 distinct images leave no "
                                         r"image for split val \(sft 1, feedback 1, val 0, test 1 images; the splits "
                                         "take 25/45/10/20%"):
        prepare_data(cfg)
    assert not RunPaths(cfg.run_dir).data.exists()


def write_coco(folder: Path, n_images: int, captions_per_image: int = 3) -> Path:
    """`folder/captions.json` over n_images shape PNGs in `folder`, several captions each."""
    images, annotations = [], []
    for i, (colour, shape) in enumerate(SHAPES[:n_images]):
        (folder / f"{i}.png").write_bytes(shape_png(colour, shape))
        images.append({"id": i, "file_name": f"{i}.png"})
        for k in range(captions_per_image):
            annotations.append({"id": 100 * i + k, "image_id": i, "caption": f"caption {k} of a {colour} {shape}"})
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def split_of_each_image(cfg) -> dict[bytes, set[str]]:
    seen: dict[bytes, set[str]] = {}
    for name in SPLITS:
        for data in load_split(cfg, name).column("image").to_pylist():
            seen.setdefault(data, set()).add(name)
    return seen


@pytest.mark.parametrize("seed", range(3))
def test_coco_images_with_several_captions_are_in_one_split_each(tmp_path, seed):
    cfg = load_config(TINY, own_data(tmp_path / "run", write_coco(tmp_path, 8), "coco",
                                     f"data.image_dir={tmp_path}", f"data.seed={seed}"))
    prepare_data(cfg)
    assert all(len(names) == 1 for names in split_of_each_image(cfg).values())
    records = [row for name in SPLITS for row in load_split(cfg, name).to_pylist()]
    assert len(records) == 8  # one record per image
    assert all(len(row["references"]) == 3 and row["reference"] == row["references"][0] for row in records)


@pytest.mark.parametrize("seed", range(3))
def test_manifest_records_sharing_an_image_file_are_in_one_split(tmp_path, seed):
    manifest = write_manifest(tmp_path, 8)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows += [{**row, "id": f"{row['id']}-again", "prompt": "What is shown?"} for row in rows]  # same file
    (tmp_path / "copy.png").write_bytes((tmp_path / "0.png").read_bytes())  # same bytes, another path
    rows.append({**rows[0], "id": "copy", "image": "copy.png"})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(TINY, own_data(tmp_path / "run", manifest, "manifest", f"data.seed={seed}"))
    prepare_data(cfg)
    seen = split_of_each_image(cfg)
    assert len(seen) == 8 and all(len(names) == 1 for names in seen.values())
    assert sum(load_split(cfg, name).num_rows for name in SPLITS) == 17


def test_eval_scores_against_every_caption_of_an_image(tmp_path):
    cfg = load_config(TINY, own_data(tmp_path / "run", write_coco(tmp_path, 8), "coco",
                                     f"data.image_dir={tmp_path}", "eval.max_new_tokens=2"))
    run_eval(cfg, "init")
    samples = pq.read_table(RunPaths(cfg.run_dir).eval_dir("init") / "samples.parquet")
    assert samples.column("references").to_pylist() == load_split(cfg, "test").column("references").to_pylist()
    assert {len(refs) for refs in samples.column("references").to_pylist()} == {3}
    csv = (RunPaths(cfg.run_dir).eval_dir("init") / "samples.csv").read_text()
    assert "caption 0 of a" in csv and "caption 2 of a" in csv


def test_eval_review_samples_carry_their_image_a_page_and_tensorboard_entries(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmrlhf.metrics import tensorboard_dir

    cfg = load_config(TINY, own_data(tmp_path / "run", write_coco(tmp_path, 8), "coco",
                                     f"data.image_dir={tmp_path}", "eval.max_new_tokens=2"))
    metrics = run_eval(cfg, "init")
    out = RunPaths(cfg.run_dir).eval_dir("init")
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    test = load_split(cfg, "test").to_pylist()
    assert len(samples) == len(test) >= 1
    page = (out / "review.html").read_text()
    for sample, record in zip(samples, test):
        assert (out / sample["image"]).read_bytes() == record["image"]
        assert base64.b64encode(record["image"]).decode() in page
        assert html.escape(sample["response"]) in page and html.escape(record["references"][2]) in page
    assert '"image"' in (out / "samples.csv").read_text().splitlines()[0].split(",")
    events = EventAccumulator(str(tensorboard_dir(cfg.run_dir)))
    events.Reload()
    assert events.Scalars("eval/init/bleu")[0].value == pytest.approx(metrics["bleu"])
    assert "eval/init/exact_match_low" in events.Tags()["scalars"]
    assert "eval/init/samples/text_summary" in events.Tags()["tensors"]  # how add_text stores it


@pytest.mark.parametrize("source", ["llava", "coco"])
def test_allow_urls_reaches_the_llava_and_coco_readers(tmp_path, monkeypatch, source):
    fetched = []

    def urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(shape_png(*SHAPES[urls.index(url)]))  # eight distinct images

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    urls = [f"https://example.com/{i}.png" for i in range(8)]
    if source == "llava":
        data = [{"id": f"r{i}", "image": url, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "a red square"}]}
            for i, url in enumerate(urls)]
    else:
        data = {"images": [{"id": i, "file_name": url} for i, url in enumerate(urls)],
                "annotations": [{"id": 100 + i, "image_id": i, "caption": "a red square"} for i in range(8)]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    cfg = load_config(TINY, own_data(tmp_path / "run", tmp_path / "data.json", source,
                                     f"data.image_dir={tmp_path}", "data.allow_urls=true"))
    prepare_data(cfg)
    assert fetched == urls
    assert sum(load_split(cfg, name).num_rows for name in SPLITS) == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=manifest"], "data.path: got None, expected the data file to read with data.source=manifest"),
        (["data.source=llava", "data.path=chat.json"],
         "data.image_dir: got None, expected the folder of the images that data.source=llava names"),
        (["data.source=coco", "data.path=captions.json"], "data.image_dir: got None"),
    ],
)
def test_own_data_source_without_its_files_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_eval_on_own_data_has_text_metrics_but_no_gold_score(tmp_path):
    cfg = load_config(TINY, own_data(tmp_path / "run", write_manifest(tmp_path, 8), "manifest", "eval.max_new_tokens=2"))
    metrics = run_eval(cfg, "init")
    assert {"exact_match", "bleu", "rouge_l"} <= metrics.keys() and "gold" not in metrics
    samples = pq.read_table(RunPaths(cfg.run_dir).eval_dir("init") / "samples.parquet")
    assert samples.column("reference").to_pylist() == load_split(cfg, "test").column("reference").to_pylist()
    assert "gold" not in samples.column_names


def test_feedback_simulate_on_own_data_refuses_in_one_line_before_loading_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["feedback", "simulate", "--config", str(TINY), *own_data(run_dir, write_manifest(tmp_path, 8))]) == 1
    err = capsys.readouterr().err
    assert err == f"mmrlhf feedback: data.source=manifest: {NO_GOLD_SCORE}\n"
    assert "mmrlhf feedback import FILE --kind pairwise|ranking|rating" in err
    assert not run_dir.exists()


def test_train_on_own_data_without_pairs_stops_at_feedback_with_the_same_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sft_runs = []
    monkeypatch.setattr("mmrlhf.stages.sft.run_sft", sft_runs.append)  # SFT itself is not under test
    argv = ["train", "--config", str(TINY), *own_data(tmp_path / "run", write_manifest(tmp_path, 8))]
    assert main(argv) == 1
    assert len(sft_runs) == 1
    assert capsys.readouterr().err == f"mmrlhf train: data.source=manifest: {NO_GOLD_SCORE}\n"
    assert not RunPaths(tmp_path / "run").pairs.exists()


def test_a_preset_on_own_data_gets_a_tokenizer_trained_on_its_captions(tmp_path):
    from transformers import AutoTokenizer

    from mmrlhf.data.schema import record_references
    from mmrlhf.stages.common import policy_path

    words = "zebra giraffe kayak lighthouse meadow harbor canyon glacier".split()
    folder = tmp_path / "img"
    folder.mkdir()
    coco = write_coco(folder, 8)
    data = json.loads(coco.read_text())
    for ann in data["annotations"]:  # captions of 9-15 words, most outside the presets' own words
        ann["caption"] = f"a {words[ann['image_id']]} beside a {words[(ann['image_id'] + 1) % 8]} near the " \
                         f"{words[(ann['image_id'] + 2) % 8]} on a calm morning {ann['id']}"
    coco.write_text(json.dumps(data))
    cfg = load_config(TINY, own_data(tmp_path / "run", coco, "coco", f"data.image_dir={folder}"))
    tokenizer = AutoTokenizer.from_pretrained(policy_path(cfg, "init"))
    references = [ref for refs in record_references(load_split(cfg, "test")) for ref in refs]
    ids = [i for ref in references for i in tokenizer(ref, add_special_tokens=False)["input_ids"]]
    assert sum(i == tokenizer.unk_token_id for i in ids) / len(ids) < 0.05
    digits_tokenizer = AutoTokenizer.from_pretrained(policy_path(load_config(TINY, [f"run_dir={tmp_path / 'd'}"]), "init"))
    assert digits_tokenizer.unk_token_id in digits_tokenizer("zebra kayak", add_special_tokens=False)["input_ids"]
