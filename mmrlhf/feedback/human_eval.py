"""Human evaluation statistics: win rate with a Wilson interval, inter-annotator agreement (Cohen's kappa).

Each first showing of a blind A/B pair (:mod:`mmrlhf.feedback.labeling`) is one judgement:
the evaluated policy wins, loses or ties against the baseline; "can't judge" is left out. The
win rate is wins / (wins + losses), ties reported apart, with the Wilson score interval
(Wilson 1927; ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``), which treats the
judgements as independent. Agreement is Cohen's kappa (Cohen 1960;
``sklearn.metrics.cohen_kappa_score``) over the items two annotators both judged, on the labels
policy / tie / baseline, for every pair of annotators; with more than two, their mean
(Light's kappa, Light 1971) is reported too.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

MIN_SHARED_ITEMS = 2  # kappa over fewer shared items says nothing


def win_rate(wins: int, losses: int, confidence: float = 0.95) -> dict[str, float | None]:
    """``{"win_rate", "win_rate_low", "win_rate_high"}``: wins / (wins + losses) and its Wilson interval.

    All None when there is no decided judgement. Raises ValueError for negative counts or a
    confidence outside (0, 1).
    """
    if wins < 0 or losses < 0 or not 0 < confidence < 1:
        raise ValueError(f"win_rate: wins={wins}, losses={losses}, confidence={confidence}; expected counts >= 0 "
                         "and a confidence in (0, 1)")
    if wins + losses == 0:
        return {"win_rate": None, "win_rate_low": None, "win_rate_high": None}
    interval = binomtest(wins, wins + losses).proportion_ci(confidence_level=confidence, method="wilson")
    return {"win_rate": wins / (wins + losses), "win_rate_low": interval.low, "win_rate_high": interval.high}


def pairwise_kappas(labels: dict[str, dict[str, str]]) -> dict[str, float | None]:
    """Cohen's kappa for each pair of annotators: ``labels[annotator][item] = label``.

    Keys ``"<annotator>|<annotator>"``; pairs sharing fewer than :data:`MIN_SHARED_ITEMS` items
    are left out; a kappa that is undefined (both gave one same label throughout) is None.
    """
    kappas = {}
    for a, b in itertools.combinations(sorted(labels), 2):
        shared = sorted(labels[a].keys() & labels[b].keys())
        if len(shared) < MIN_SHARED_ITEMS:
            continue
        kappa = cohen_kappa_score([labels[a][i] for i in shared], [labels[b][i] for i in shared])
        kappas[f"{a}|{b}"] = None if math.isnan(kappa) else float(kappa)
    return kappas


def human_eval_metrics(answers: list[dict[str, Any]], origins: dict[str, tuple[str, str]],
                       policy: str) -> dict[str, Any]:
    """Win rate of ``policy`` over the other origin, ties, kappa, from labeling-page answers.

    ``origins[item_id]`` = (origin of response a, origin of response b); ``policy`` one of them.
    Returns ``wins``, ``losses``, ``ties``, ``cant_judge``, ``n`` (judgements), ``tie_rate``, the
    :func:`win_rate` keys, ``kappa`` (per annotator pair) and ``kappa_mean``.
    Raises ValueError for an answer whose item has no origins.
    """
    counts = {"wins": 0, "losses": 0, "ties": 0, "cant_judge": 0}
    labels: dict[str, dict[str, str]] = {}
    for a in answers:
        if a["repeat"]:
            continue
        if a["item_id"] not in origins:
            raise ValueError(f"answer {a['answer_id']}: item {a['item_id']} is not one of the evaluated pairs")
        if a["preferred"] == "cant_judge":
            counts["cant_judge"] += 1
            continue
        if a["preferred"] == "tie":
            label = "tie"
        else:
            label = "policy" if origins[a["item_id"]]["ab".index(a["preferred"])] == policy else "baseline"
        counts[{"tie": "ties", "policy": "wins", "baseline": "losses"}[label]] += 1
        labels.setdefault(a["annotator"], {})[a["item_id"]] = label
    n = counts["wins"] + counts["losses"] + counts["ties"]
    kappas = pairwise_kappas(labels)
    defined = [k for k in kappas.values() if k is not None]
    return {**counts, "n": n, "tie_rate": counts["ties"] / n if n else None,
            **win_rate(counts["wins"], counts["losses"]), "kappa": kappas,
            "kappa_mean": sum(defined) / len(defined) if defined else None}
