"""Held-out text metrics against every reference of a record: exact match, BLEU, ROUGE-L, CIDEr.

BLEU is sacrebleu's multi-reference corpus BLEU (Post 2018); ROUGE-L the F-measure of Google's
rouge-score (Lin 2004), the best over the references (``RougeScorer.score_multi``); CIDEr the
COCO caption evaluation's implementation (``pycocoevalcap``, Vedantam et al. 2015), over
lower-cased word tokens (the COCO tool's PTB tokenizer needs Java). A response is an exact match
when it equals any reference (:func:`mmrlhf.data.digits.exact_match`). Fewer than
:data:`mmrlhf.stats.SMALL_SAMPLE` examples also get 95% intervals: Wilson for exact match, the
percentile bootstrap over examples for the others.
"""

from __future__ import annotations

import math
import re
from itertools import zip_longest

import numpy as np
import sacrebleu
from pycocoevalcap.cider.cider import Cider
from rouge_score import rouge_scorer

from mmrlhf.data.digits import exact_match
from mmrlhf.stats import SMALL_SAMPLE, bootstrap_interval, interval_keys, mean_interval, wilson_interval


def _cider_tokens(text: str) -> str:
    """Lower-cased word tokens joined by spaces, as CIDEr's n-gram counts expect."""
    return " ".join(re.findall(r"\w+", text.lower()))


def cider(hypotheses: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """Corpus CIDEr (pycocoevalcap's ``Cider``, n=4, sigma=6) and the per-example scores.

    hypotheses: one response per example; references: each example's non-empty reference list.
    Unitless, 0 up to about 10 (COCO reports it x100 too; we do not). Its idf is taken over
    this corpus, so a corpus of one example scores 0.
    """
    gts = {i: [_cider_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_cider_tokens(h)] for i, h in enumerate(hypotheses)}
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]


def _bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    streams = [list(stream) for stream in zip_longest(*references)]  # None where an example has fewer
    return sacrebleu.corpus_bleu(hypotheses, streams).score


def text_metrics(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match (and its standard error), BLEU, ROUGE-L in percent (0–100) and CIDEr.

    hypotheses: one response per example; references: each example's references (one or more
    strings; every one is used). Under :data:`mmrlhf.stats.SMALL_SAMPLE` examples, adds each
    metric's 95% interval as ``<name>_low`` / ``<name>_high`` (same units).

    Raises:
        ValueError: the lists differ in length or are empty, or an example has no reference
            (names its position).
    """
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"text_metrics: {len(hypotheses)} hypotheses for {len(references)} references")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"text_metrics: example {empty[0]} has no reference ({len(empty)} such examples)")
    em = np.array([any(exact_match(h, r) for r in refs) for h, refs in zip(hypotheses, references)], np.float64)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = 100 * np.array([scorer.score_multi(refs, h)["rougeL"].fmeasure for h, refs in zip(hypotheses, references)])
    cider_score, cider_scores = cider(hypotheses, references)
    metrics = {
        "exact_match": 100 * em.mean(),
        "exact_match_stderr": 100 * math.sqrt(em.mean() * (1 - em.mean()) / len(em)),
        "bleu": _bleu(hypotheses, references),
        "rouge_l": float(rouge.mean()),
        "cider": cider_score,
    }
    if len(em) < SMALL_SAMPLE:
        low, high = wilson_interval(int(em.sum()), len(em))
        metrics |= interval_keys("exact_match", (100 * low, 100 * high))
        metrics |= interval_keys("bleu", bootstrap_interval(
            lambda idx: _bleu([hypotheses[i] for i in idx], [references[i] for i in idx]), len(em)))
        metrics |= interval_keys("rouge_l", mean_interval(rouge))
        metrics |= interval_keys("cider", mean_interval(cider_scores))  # this corpus's idf, held fixed
    return metrics
