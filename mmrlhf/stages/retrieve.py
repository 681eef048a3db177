"""``mmrlhf retrieve``: cross-modal retrieval with the reward model's joint embedding.

The reward model's CLIP towers (open_clip; Radford et al. 2021) map images and texts into one
space; ranking a data split's images by cosine similarity to a text (text -> images), or the
split's texts to an image (image -> texts), is retrieval. The same embedding of a whole split
gives recall@1/5/10 in both directions for ``mmrlhf eval`` (:func:`retrieval_metrics`; the
math is :mod:`mmrlhf.algorithms.retrieval`).

A split's text gallery is the set of distinct texts among its records' references (all of a
record's references; records without one add none), so a text several images share ("four one")
is one gallery item and one text query, and any image with that text is a hit for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrlhf.algorithms.retrieval import RECALL_KS, chance_recall_at_k, recall_at_k, text_relevance
from mmrlhf.config import RunConfig
from mmrlhf.data.media import ImageDecodeError, decode_image
from mmrlhf.data.schema import record_references
from mmrlhf.reward.scorer import RewardScorer
from mmrlhf.stages.common import RunPaths, write_text_atomic
from mmrlhf.stages.data import SPLITS, decode_images, load_split, prepare_data
from mmrlhf.stages.lineage import REWARD, check_current

TEXT_TO_IMAGE, IMAGE_TO_TEXT = "text_to_image", "image_to_text"


@dataclass
class SplitEmbedding:
    """A split in the joint embedding.

    ids: N record ids; image_texts: each record's references ([] for an unlabeled one);
    image_emb: (N, E); texts: the T distinct reference texts, sorted; text_emb: (T, E).
    Embeddings are float32, L2-normalised, so a matrix product gives cosines.
    """

    ids: list[str]
    image_texts: list[list[str]]
    image_emb: torch.Tensor
    texts: list[str]
    text_emb: torch.Tensor


def embed_split(scorer: RewardScorer, ids: list[str], images: list[np.ndarray],
                references: list[list[str] | None]) -> SplitEmbedding:
    """Embed N records' images (uint8 (H, W) or (H, W, 3)) and their distinct reference texts
    (``record_references`` of the split; None for an unlabeled record)."""
    image_texts = [list(refs or []) for refs in references]
    texts = sorted({text for refs in image_texts for text in refs})
    return SplitEmbedding(ids, image_texts, scorer.embed_images(images), texts, scorer.embed_texts(texts))


def retrieval_metrics(split: SplitEmbedding, ks: tuple[int, ...] = RECALL_KS, chance: bool = False) -> dict[str, float]:
    """Recall@k (0-1) of both directions over a split:

    ``t2i_recall@k``: each distinct text queries the N images; a hit is an image whose record has
    that text among its references. ``i2t_recall@k``: each labeled image queries the T distinct
    texts; a hit is any of its record's references. Ties count against the query
    (:func:`mmrlhf.algorithms.retrieval.recall_at_k`). An empty dict when the split has no text.
    ``chance``: the same keys for a uniformly random ranking instead (expected values,
    :func:`mmrlhf.algorithms.retrieval.chance_recall_at_k`); the embeddings play no part.
    """
    if not split.texts:
        return {}
    labeled = [i for i, refs in enumerate(split.image_texts) if refs]
    t2i_relevant = text_relevance([[t] for t in split.texts], split.image_texts)  # (T, N)
    i2t_relevant = text_relevance([split.image_texts[i] for i in labeled], [[t] for t in split.texts])  # (N', T)
    if chance:
        t2i, i2t = chance_recall_at_k(t2i_relevant, ks), chance_recall_at_k(i2t_relevant, ks)
    else:
        similarity = split.text_emb @ split.image_emb.T  # (T, N) cosines
        t2i, i2t = recall_at_k(similarity, t2i_relevant, ks), recall_at_k(similarity.T[labeled], i2t_relevant, ks)
    return {**{f"t2i_recall@{k}": v for k, v in t2i.items()}, **{f"i2t_recall@{k}": v for k, v in i2t.items()}}


def load_embedder(cfg: RunConfig, model: str) -> RewardScorer:
    """The joint embedding to use: ``trained`` (``<run_dir>/reward/model``), ``untrained`` (the
    configured ``model.reward`` before any training: a preset, saved model or open_clip name +
    tag) or a folder written by ``RewardModel.save_pretrained``.

    Raises FileNotFoundError naming the missing model and the command that makes it,
    ValueError for a folder that is not a reward model.
    """
    if model == "untrained":
        from mmrlhf.stages.reward_train import initial_reward_model

        return RewardScorer(initial_reward_model(cfg))
    folder = RunPaths(cfg.run_dir).reward_model if model == "trained" else Path(model).expanduser()
    if not (folder / "config.json").is_file():
        fix = ("run `mmrlhf reward train` first, or pass --model untrained" if model == "trained"
               else "expected 'trained', 'untrained' or a reward model folder")
        raise FileNotFoundError(f"no reward model at {folder}: {fix}")
    return RewardScorer.from_pretrained(folder)


def read_query_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """The query image file -> uint8 (H, W) or (H, W, 3).

    Raises FileNotFoundError for a missing file, ValueError naming the file when it cannot be
    read or decoded, or is above ``max_pixels``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--image {path}: no such file")
    try:
        return decode_image(path.read_bytes(), str(path), max_pixels)
    except ImageDecodeError as err:
        raise ValueError(f"--image {path}: {err.reason}") from None
    except OSError as err:
        raise ValueError(f"--image {path}: cannot read ({err.strerror or err})") from None


def _check_request(query: str | None, image: str | None, split: str, k: int) -> None:
    if (query is None) == (image is None):
        raise ValueError("retrieve: give exactly one of --query TEXT (text -> images) or --image PATH (image -> texts)")
    if query is not None and not query.strip():
        raise ValueError("retrieve: --query is empty; give the text to search the images with")
    if split not in SPLITS:
        raise ValueError(f"retrieve: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if k < 1:
        raise ValueError(f"retrieve: --k {k}, expected an integer >= 1")


def run_retrieve(cfg: RunConfig, query: str | None = None, image: str | None = None, split: str = "test",
                 k: int = 5, model: str = "trained", out: str | Path | None = None,
                 force: bool = False) -> list[dict]:
    """Top-``k`` of one split by cosine in the joint embedding: its images for the text ``query``,
    or its distinct reference texts for the image file ``image``.

    Writes the rows to ``out`` (default ``<run_dir>/retrieve/results.jsonl``) as JSONL, atomically,
    and returns them, best first: ``{"direction": "text_to_image" | "image_to_text", "query",
    "split", "model", "rank" (1-based), "score" (cosine, -1 to 1), "text", "ids"}``, where
    ``text`` is the retrieved text (text -> images: the image's first reference, "" if none) and
    ``ids`` the records it stands for (text -> images: the image's record; image -> texts: every
    record with that reference). Ties keep the split's order.

    Raises:
        ValueError: both or neither of query and image, an empty query, an unknown split, k < 1,
            an unreadable image file, a split with no reference text to retrieve (names it).
        FileNotFoundError: the image file or the reward model is missing (names the command).
        StaleOutputError: the splits or the trained reward model are stale, unless ``force``.
    """
    _check_request(query, image, split, k)
    query_image = read_query_image(image, cfg.data.max_image_pixels) if image is not None else None
    embedder = load_embedder(cfg, model)
    prepare_data(cfg, force=force)
    if model == "trained":
        check_current(cfg, REWARD.folder, force)
    table = load_split(cfg, split)
    ids = table.column("id").to_pylist()
    embedded = embed_split(embedder, ids, decode_images(table, cfg.data.media), record_references(table))
    base = {"split": split, "model": model}
    if query_image is None:
        scores = (embedder.embed_texts([query]) @ embedded.image_emb.T)[0]  # (N,)
        top = torch.sort(scores, descending=True, stable=True).indices[:k].tolist()
        rows = [{"direction": TEXT_TO_IMAGE, "query": query, **base, "score": float(scores[i]),
                 "text": (embedded.image_texts[i] or [""])[0], "ids": [ids[i]]} for i in top]
    else:
        if not embedded.texts:
            raise ValueError(f"retrieve: the {split} split has no reference text to retrieve")
        scores = (embedder.embed_images([query_image]) @ embedded.text_emb.T)[0]  # (T,)
        top = torch.sort(scores, descending=True, stable=True).indices[:k].tolist()
        rows = [{"direction": IMAGE_TO_TEXT, "query": str(image), **base, "score": float(scores[t]),
                 "text": embedded.texts[t],
                 "ids": [ids[i] for i, refs in enumerate(embedded.image_texts) if embedded.texts[t] in refs]}
                for t in top]
    rows = [{**row, "rank": rank} for rank, row in enumerate(rows, start=1)]
    write_text_atomic(Path(out) if out else RunPaths(cfg.run_dir).retrieve, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def format_retrieval(rows: list[dict]) -> str:
    """The rows of :func:`run_retrieve` as a plain-text table under a one-line heading."""
    first = rows[0]
    what = "images" if first["direction"] == TEXT_TO_IMAGE else "texts"
    lines = [f"top {len(rows)} {first['split']} {what} for {first['query']!r} "
             f"({first['model']} reward model's joint embedding, cosine)",
             f"{'rank':>4}  {'cosine':>7}  {'text':<32}  records"]
    for row in rows:
        more = f" (+{len(row['ids']) - 3})" if len(row["ids"]) > 3 else ""
        lines.append(f"{row['rank']:>4}  {row['score']:>7.3f}  {row['text']:<32}  {', '.join(row['ids'][:3])}{more}")
    return "\n".join(lines)
