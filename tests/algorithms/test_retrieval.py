"""Recall@K over a similarity matrix and its chance level, against slow obvious references."""

import itertools

import pytest
import torch

from mmrlhf.algorithms.retrieval import chance_recall_at_k, recall_at_k, text_relevance


def reference_relevance(query_texts, gallery_texts):
    return torch.tensor([[any(t in g for t in q) for g in gallery_texts] for q in query_texts], dtype=torch.bool)


def reference_recall(similarity, relevant, ks):
    """Sort each query's gallery by score, ties broken against the query (non-relevant items
    first); a hit at k is a relevant item among the first k."""
    hits = {k: 0 for k in ks}
    for scores, rel in zip(similarity.tolist(), relevant.tolist()):
        order = sorted(range(len(scores)), key=lambda g: (-scores[g], rel[g]))
        for k in ks:
            hits[k] += any(rel[g] for g in order[:k])
    return {k: hits[k] / len(similarity) for k in ks}


def test_duplicate_texts_any_image_with_the_query_text_is_a_hit():
    # three images: "four one" twice, "seven" once; queries are the distinct texts
    images = [["four one"], ["seven"], ["four one"]]
    texts = ["four one", "seven"]
    relevant = text_relevance([[t] for t in texts], images)
    assert relevant.tolist() == [[True, False, True], [False, True, False]]
    similarity = torch.tensor([[0.1, 0.9, 0.8],   # "four one": image 2 (also "four one") ranks 2nd
                               [0.0, 0.5, 0.7]])  # "seven": its only image ranks 2nd
    assert recall_at_k(similarity, relevant, (1, 2)) == {1: 0.0, 2: 1.0}
    similarity[0, 2] = 0.95  # now the other "four one" image is first: a hit
    assert recall_at_k(similarity, relevant, (1, 2)) == {1: 0.5, 2: 1.0}
    # image -> text: an image's query hits the text it shares with any image
    assert text_relevance(images, [[t] for t in texts]).tolist() == [[True, False], [False, True], [True, False]]


def test_ties_count_against_the_query_so_a_constant_similarity_earns_only_the_worst_order():
    relevant = torch.tensor([[False, True, False, False], [True, True, False, False]])
    flat = torch.zeros(2, 4)
    assert recall_at_k(flat, relevant, (1, 2, 3, 4, 9)) == {1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0, 9: 1.0}


@pytest.mark.parametrize("seed", range(6))
def test_recall_matches_the_sorting_reference_on_random_inputs_with_ties_and_duplicate_texts(seed):
    generator = torch.Generator().manual_seed(seed)
    vocabulary = ["one", "two", "four one", "seven", "one two"]
    n_images, n_queries = 12, 7
    pick = torch.randint(len(vocabulary), (n_images,), generator=generator).tolist()
    gallery = [[vocabulary[i]] for i in pick]
    queries = [gallery[i] for i in torch.randint(n_images, (n_queries,), generator=generator).tolist()]
    similarity = torch.randint(0, 3, (n_queries, n_images), generator=generator).float() / 2  # many ties
    relevant = text_relevance(queries, gallery)
    assert torch.equal(relevant, reference_relevance(queries, gallery))
    ks = (1, 2, 5, 10, 20)
    assert recall_at_k(similarity, relevant, ks) == pytest.approx(reference_recall(similarity, relevant, ks))


@pytest.mark.parametrize("seed", range(3))
def test_chance_is_the_mean_over_all_orderings(seed):
    generator = torch.Generator().manual_seed(seed)
    relevant = torch.rand(4, 6, generator=generator) < 0.3
    relevant[:, seed] = True  # every query has a relevant item
    ks = (1, 2, 5, 6)
    hits = {k: 0.0 for k in ks}
    orders = list(itertools.permutations(range(6)))
    for order in orders:
        similarity = torch.empty(4, 6)
        similarity[:, list(order)] = -torch.arange(6.0)  # the item at position p scores -p
        for k, v in recall_at_k(similarity, relevant, ks).items():
            hits[k] += v / len(orders)
    assert chance_recall_at_k(relevant, ks) == pytest.approx(hits)


@pytest.mark.parametrize("similarity, relevant, ks, message", [
    (torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), (1,), r"similarity \(2, 3\) and relevant \(2, 4\)"),
    (torch.zeros(0, 3), torch.ones(0, 3, dtype=torch.bool), (1,), "0 queries and 3 gallery items"),
    (torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), (0, 1), r"ks=\[0, 1\], each must be >= 1"),
    (torch.zeros(2, 3), torch.tensor([[True, False, False], [False] * 3]), (1,), "query 1 has no relevant gallery item"),
])
def test_bad_inputs_are_refused_naming_what_is_wrong(similarity, relevant, ks, message):
    with pytest.raises(ValueError, match=message):
        recall_at_k(similarity, relevant, ks)
