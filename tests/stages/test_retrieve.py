"""`mmrlhf retrieve` and the retrieval recall@K of `mmrlhf eval`, on the tiny run's reward model."""

import json
import shutil

import pytest
import torch

from mmrlhf.cli import main
from mmrlhf.config import load_config
from mmrlhf.data.schema import record_references
from mmrlhf.reward.scorer import RewardScorer
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.data import decode_images, load_split
from mmrlhf.stages.eval import print_metrics, run_eval
from mmrlhf.stages.retrieve import SplitEmbedding, retrieval_metrics
from tests.stages.conftest import TINY


def args(cfg, *extra):
    return ["retrieve", "--config", str(TINY), f"run_dir={cfg.run_dir}", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def embedded(reward_run):
    """(test split table, its images, (N, E) image and the scorer) of the trained reward model, computed directly."""
    scorer = RewardScorer.from_pretrained(RunPaths(reward_run.run_dir).reward_model)
    table = load_split(reward_run, "test")
    images = decode_images(table, reward_run.data.media)
    return table, images, scorer.embed_images(images), scorer


def test_text_query_lists_the_top_k_images_by_cosine_as_a_table_and_jsonl(reward_run, embedded, tmp_path, capsys):
    table, _, image_emb, scorer = embedded
    out = tmp_path / "hits.jsonl"
    assert main(args(reward_run, "--query", "four one", "--k", "4", "--out", str(out))) == 0
    rows = read_jsonl(out)
    cosines = (scorer.embed_texts(["four one"]) @ image_emb.T)[0]
    expected = torch.argsort(cosines, descending=True, stable=True)[:4].tolist()
    ids, references = table.column("id").to_pylist(), table.column("reference").to_pylist()
    assert [r["ids"] for r in rows] == [[ids[i]] for i in expected]
    assert [r["text"] for r in rows] == [references[i] for i in expected]
    assert [r["score"] for r in rows] == pytest.approx(cosines[expected].tolist(), abs=1e-5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert {(r["direction"], r["query"], r["split"], r["model"]) for r in rows} == {
        ("text_to_image", "four one", "test", "trained")}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "top 4 test images for 'four one' (trained reward model's joint embedding, cosine)"
    assert len(printed) == 6 and printed[2].split()[:2] == ["1", f"{rows[0]['score']:.3f}"]


def test_image_query_lists_the_splits_distinct_texts_with_every_record_that_has_them(reward_run, embedded, tmp_path):
    table, images, _, scorer = embedded
    query = tmp_path / "query.png"
    query.write_bytes(table.column("image")[0].as_py())  # a test image, as a user's file
    out = tmp_path / "texts.jsonl"
    assert main(args(reward_run, "--image", str(query), "--k", "3", "--model", "untrained", "--out", str(out))) == 0
    rows = read_jsonl(out)
    untrained = RewardScorer.from_pretrained(RunPaths(reward_run.run_dir).presets / "reward-tiny")
    texts = sorted({ref for refs in record_references(table) for ref in refs})
    cosines = (untrained.embed_images(images[:1]) @ untrained.embed_texts(texts).T)[0]
    expected = torch.argsort(cosines, descending=True, stable=True)[:3].tolist()
    assert [r["text"] for r in rows] == [texts[t] for t in expected]
    assert [r["score"] for r in rows] == pytest.approx(cosines[expected].tolist(), abs=1e-5)
    ids, references = table.column("id").to_pylist(), table.column("reference").to_pylist()
    assert all(r["ids"] == [i for i, ref in zip(ids, references) if ref == r["text"]] for r in rows)
    assert {(r["direction"], r["query"], r["model"]) for r in rows} == {("image_to_text", str(query), "untrained")}


@pytest.mark.parametrize("extra, message", [
    (["--query", "  "], "retrieve: --query is empty; give the text to search the images with"),
    (["--query", "one", "--split", "train"], "retrieve: unknown split 'train'; expected one of sft, feedback, val, test"),
    (["--query", "one", "--k", "0"], "retrieve: --k 0, expected an integer >= 1"),
    (["--image", "{tmp}/missing.png"], "--image {tmp}/missing.png: no such file"),
    (["--image", "{tmp}/bad.png"], "--image {tmp}/bad.png: bytes are not a recognised image format"),
    (["--query", "one", "--model", "{tmp}"], "no reward model at {tmp}: expected 'trained', 'untrained' or a reward "
                                             "model folder"),
])
def test_bad_requests_fail_in_one_line_with_exit_1_and_write_nothing(reward_run, tmp_path, capsys, extra, message):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "hits.jsonl"
    capsys.readouterr()
    assert main(args(reward_run, *[e.format(tmp=tmp_path) for e in extra], "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmrlhf retrieve: {message.format(tmp=tmp_path)}") and err.count("\n") == 1
    assert not out.exists() and not RunPaths(reward_run.run_dir).retrieve.exists()


def test_without_a_trained_reward_model_it_names_the_command(reward_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(RunPaths(reward_run.run_dir).data, RunPaths(run_dir).data)
    cfg = load_config(TINY, [f"run_dir={run_dir}"])
    assert main(args(cfg, "--query", "four")) == 1
    assert capsys.readouterr().err == (f"mmrlhf retrieve: no reward model at {RunPaths(run_dir).reward_model}: run "
                                       "`mmrlhf reward train` first, or pass --model untrained\n")
    assert not RunPaths(run_dir).retrieve.exists()


def test_retrieval_metrics_query_each_direction_and_count_shared_texts_as_hits():
    # 2-D unit vectors: image 0 and image 2 both read "four one", image 3 has no reference
    image_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    text_emb = torch.tensor([[0.0, 1.0],    # "four one": nearest image 1 (wrong), then 2 (right)
                             [0.6, 0.8]])   # "seven": nearest image 2 (wrong)
    split = SplitEmbedding(["a", "b", "c", "d"], [["four one"], ["seven"], ["four one"], []],
                           image_emb, ["four one", "seven"], text_emb)
    metrics = retrieval_metrics(split, ks=(1, 2))
    assert metrics == {"t2i_recall@1": 0.0, "t2i_recall@2": 0.5,
                       # image queries (the unlabeled image 3 is none): 0 and 2 rank "seven" first, 1 ranks
                       # "four one" first; each one's own text comes second
                       "i2t_recall@1": 0.0, "i2t_recall@2": 1.0}
    # a random ranking: "four one" has 2 of 4 images, "seven" 1; each image query 1 of 2 texts
    assert retrieval_metrics(split, ks=(1, 2), chance=True) == pytest.approx(
        {"t2i_recall@1": (2 / 4 + 1 / 4) / 2, "t2i_recall@2": ((1 - 1 / 6) + 1 / 2) / 2,
         "i2t_recall@1": 0.5, "i2t_recall@2": 1.0})


def test_eval_reports_recall_at_k_of_both_directions(reward_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reward_run.run_dir, run_dir)
    cfg = load_config(TINY, [f"run_dir={run_dir}", "eval.max_new_tokens=2"])
    metrics = run_eval(cfg, "init")
    keys = [f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
    saved = json.loads((RunPaths(run_dir).eval_dir("init") / "metrics.json").read_text())
    assert all(0 <= metrics[key] == saved[key] <= 1 for key in keys)
    assert metrics["t2i_recall@1"] <= metrics["t2i_recall@5"] <= metrics["t2i_recall@10"]
    print_metrics(metrics, "test")
    printed = capsys.readouterr().out
    assert all(f"{key:>20s} {metrics[key]:10.3f}" in printed for key in keys)
