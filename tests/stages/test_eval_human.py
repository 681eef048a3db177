"""`mmrlhf eval --human`: blind pairs of two policies, scripted answers, win rate with interval and kappa."""

import json
from pathlib import Path

import pytest
import torch

from mmrlhf.cli import main
from mmrlhf.config import load_config
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore
from mmrlhf.feedback.labeling import LabelingSession
from mmrlhf.feedback.tasks import load_tasks
from mmrlhf.models.policy import load_policy
from mmrlhf.stages.common import policy_path
from mmrlhf.stages.eval_human import human_eval_dir, prepare_human_eval

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


def perturbed_copy(cfg, out: Path) -> Path:
    """The init policy with its LM head re-drawn: a second policy that writes other texts."""
    model, processor = load_policy(str(policy_path(cfg, "init")))
    torch.manual_seed(1)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.copy_(torch.randn_like(head) * head.std() * 4)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_blind_pairs_scripted_answers_report_win_rate_interval_and_kappa(tmp_path, capsys):
    overrides = [f"run_dir={tmp_path / 'run'}", "eval.n_review=12", "eval.max_new_tokens=4"]
    cfg = load_config(TINY, overrides)
    other = str(perturbed_copy(cfg, tmp_path / "other"))
    tasks_dir = prepare_human_eval(cfg, policy=other, baseline="init")
    tasks = load_tasks(tasks_dir)
    assert tasks.kind == "pairwise" and len(tasks.rows) + tasks.meta["identical"] == 12 and len(tasks.rows) >= 2
    assert all((r["origin_a"], r["origin_b"]) == ("init", other) and r["response_a"] != r["response_b"]
               for r in tasks.rows)

    session = LabelingSession(tasks, AnswerStore(tasks_dir / ANSWERS_DIR))
    policy_text = {r["task_id"]: r["response_b"] for r in tasks.rows}
    for annotator in ("ann1", "ann2"):
        while not (payload := session.next_item(annotator))["done"]:
            item = payload["item"]
            assert not {"origin_a", "origin_b"} & item.keys()  # blind
            left_is_policy = item["responses"][0] == policy_text[item["item_id"]]
            # ann1 always prefers the evaluated policy; ann2 only on the first item of its queue
            prefers_policy = annotator == "ann1" or payload["answered"] == 0
            choice = "A>B" if left_is_policy == prefers_policy else "B>A"
            session.record({"annotator": annotator, "item_id": item["item_id"], "repeat": item["repeat"],
                            "shown": item["shown"], "choice": choice, "seconds": 3.0, "page_version": "t"})

    assert main(["eval", "--human", "--report", "--config", str(TINY), *overrides]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((human_eval_dir(cfg) / "metrics.json").read_text())
    n = len(tasks.rows)
    assert (metrics["wins"], metrics["losses"], metrics["ties"]) == (n + 1, n - 1, 0)
    assert metrics["win_rate"] == (n + 1) / (2 * n) and metrics["win_rate_low"] < metrics["win_rate"] < metrics["win_rate_high"]
    assert set(metrics["kappa"]) == {"ann1|ann2"}
    assert metrics["annotators"]["ann1"]["self_consistency"] == 1.0
    assert f"beats init in {metrics['win_rate']:.3f} of decided pairs (95% Wilson interval" in out
    assert "Cohen's kappa" in out
    assert metrics["kappa"]["ann1|ann2"] == pytest.approx(0.0)  # ann1 is constant: agreement no better than chance

    with pytest.raises(FileExistsError, match="may hold answers"):
        prepare_human_eval(cfg, policy=other, baseline="init")
