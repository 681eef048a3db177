"""Human-evaluation statistics against hand-worked numbers: Wilson interval, Cohen's kappa, scripted answers."""

import math

import pytest

from mmrlhf.feedback.human_eval import human_eval_metrics, pairwise_kappas, win_rate

Z95 = 1.959963984540054


def wilson(k, n, z=Z95):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_win_rate_interval_is_wilsons():
    got = win_rate(7, 3)
    low, high = wilson(7, 10)
    assert got["win_rate"] == 0.7 and got["win_rate_low"] == pytest.approx(low) and got["win_rate_high"] == pytest.approx(high)
    assert win_rate(0, 0) == {"win_rate": None, "win_rate_low": None, "win_rate_high": None}
    with pytest.raises(ValueError, match="expected counts >= 0"):
        win_rate(-1, 2)


def test_kappa_matches_the_hand_computed_value():
    # 5 shared items: agree on 4 (p_o = 0.8); marginals ann1 {p: 3, t: 1, b: 1}, ann2 {p: 3, t: 0, b: 2}
    # p_e = (3*3 + 1*0 + 1*2) / 25 = 0.44; kappa = (0.8 - 0.44) / 0.56
    one = {"i1": "policy", "i2": "policy", "i3": "policy", "i4": "tie", "i5": "baseline"}
    two = {"i1": "policy", "i2": "policy", "i3": "policy", "i4": "baseline", "i5": "baseline", "i9": "tie"}
    assert pairwise_kappas({"ann1": one, "ann2": two}) == {"ann1|ann2": pytest.approx(0.36 / 0.56)}
    assert pairwise_kappas({"a": {"i1": "tie"}, "b": {"i1": "tie"}}) == {}  # one shared item says nothing
    assert pairwise_kappas({"a": {"i1": "tie", "i2": "tie"}, "b": {"i1": "tie", "i2": "tie"}}) == {"a|b": None}


def answer(annotator, item, preferred, repeat=False):
    return {"answer_id": f"{annotator}-{item}-{repeat}", "annotator": annotator, "item_id": item,
            "preferred": preferred, "repeat": repeat}


def test_metrics_resolve_sides_to_policies_and_skip_repeats_and_cant_judge():
    origins = {"i1": ("sft", "rl"), "i2": ("rl", "sft"), "i3": ("sft", "rl"), "i4": ("rl", "sft")}
    answers = [answer("ann1", "i1", "b"), answer("ann1", "i2", "a"), answer("ann1", "i3", "a"),
               answer("ann1", "i4", "tie"), answer("ann1", "i1", "a", repeat=True),
               answer("ann2", "i1", "b"), answer("ann2", "i2", "b"), answer("ann2", "i3", "a"),
               answer("ann2", "i4", "cant_judge")]
    m = human_eval_metrics(answers, origins, "rl")
    # ann1: rl, rl, sft, tie; ann2: rl, sft, sft (i4 can't judge)
    assert (m["wins"], m["losses"], m["ties"], m["cant_judge"], m["n"]) == (3, 3, 1, 1, 7)
    assert m["win_rate"] == 0.5 and m["tie_rate"] == pytest.approx(1 / 7)
    # shared i1..i3: ann1 (p, p, b), ann2 (p, b, b): p_o = 2/3, p_e = (2*1 + 1*2) / 9 = 4/9
    assert m["kappa"] == {"ann1|ann2": pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))}
    assert m["kappa_mean"] == m["kappa"]["ann1|ann2"]
    with pytest.raises(ValueError, match="item i9 is not one of the evaluated pairs"):
        human_eval_metrics([answer("ann1", "i9", "a")], origins, "rl")
