"""Cross-modal retrieval metrics over a similarity matrix: recall@K and its chance level.

Pure torch, no model: the caller embeds queries and gallery (the reward model's joint
embedding, :mod:`mmrlhf.stages.retrieve`) and passes their cosine similarities.
Recall@K as in image-text retrieval benchmarks (Karpathy & Fei-Fei 2015; CLIP, Radford et al.
2021): the share of queries with at least one relevant gallery item among the top K.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

RECALL_KS = (1, 5, 10)


def text_relevance(query_texts: Sequence[Collection[str]], gallery_texts: Sequence[Collection[str]]) -> torch.Tensor:
    """Which gallery items are hits for which queries, by text equality.

    query_texts: Q collections of strings (a text query: its one text; an image query: its
    record's references); gallery_texts: G collections, likewise.
    Returns bool (Q, G): ``relevant[q, g]`` is True when query q and gallery item g share a text.
    So when several images carry the same text (say "four one" twice), a text query "four one"
    is answered correctly by either image, and an image query by the text "four one" whichever
    image it came from: items whose texts are equal cannot be told apart by text.
    """
    index: dict[str, list[int]] = {}
    for g, texts in enumerate(gallery_texts):
        for text in set(texts):
            index.setdefault(text, []).append(g)
    relevant = torch.zeros(len(query_texts), len(gallery_texts), dtype=torch.bool)
    for q, texts in enumerate(query_texts):
        for text in set(texts):
            relevant[q, index.get(text, [])] = True
    return relevant


def _check(similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> None:
    if similarity.ndim != 2 or similarity.shape != relevant.shape:
        raise ValueError(f"recall_at_k: similarity {tuple(similarity.shape)} and relevant {tuple(relevant.shape)} "
                         "must be the same (Q, G) shape")
    if 0 in similarity.shape:
        raise ValueError(f"recall_at_k: {similarity.shape[0]} queries and {similarity.shape[1]} gallery items, "
                         "need at least one of each")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall_at_k: ks={list(ks)}, each must be >= 1")
    empty = (~relevant.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"recall_at_k: query {int(empty[0])} has no relevant gallery item "
                         f"({len(empty)} such queries); leave such queries out")


def recall_at_k(similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Recall@K of Q queries against G gallery items.

    similarity: (Q, G) float, higher is closer (cosine); relevant: (Q, G) bool, e.g. from
    :func:`text_relevance`. Returns {k: share of queries, 0-1, whose best-ranked relevant item
    is within the top k}.

    Ties count against the query: the rank of query q is 1 + the number of non-relevant items
    scoring at least as high as q's best relevant item, so the result does not depend on the
    gallery's order and a constant similarity earns only what a worst-case ordering would.
    Relevant items tied with each other do not matter. k above G counts as G.

    Raises ValueError for shapes that differ or are not 2-D, no query or no gallery item, a k
    below 1, or a query with no relevant item (names its index).
    """
    _check(similarity, relevant, ks)
    similarity = similarity.double()
    best = similarity.masked_fill(~relevant, -math.inf).amax(dim=1, keepdim=True)  # (Q, 1)
    rank = ((similarity >= best) & ~relevant).sum(dim=1) + 1  # (Q,)
    return {k: float((rank <= k).double().mean()) for k in ks}


def chance_recall_at_k(relevant: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Expected recall@K of a uniformly random ranking: for a query with m relevant items out
    of G, P(at least one in the top k) = 1 - C(G - m, k) / C(G, k); averaged over the queries.

    relevant: (Q, G) bool. Returns {k: 0-1}. Raises ValueError as :func:`recall_at_k`.
    """
    _check(relevant.double(), relevant, ks)
    n_gallery = relevant.shape[1]
    counts = relevant.sum(dim=1).tolist()
    return {k: sum(1 - math.comb(n_gallery - m, min(k, n_gallery)) / math.comb(n_gallery, min(k, n_gallery))
                   for m in counts) / len(counts) for k in ks}
