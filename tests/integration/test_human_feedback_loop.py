"""Issue 17, end to end on the digits task (tiny presets): `feedback sample` → the labeling page, answered
by a scripted person in headless Chromium → `feedback import --kind page` → `reward train` (held-out
pairwise accuracy reported) → `rl`, whose reward model is refreshed between its two steps
(`reward train --append` on new pairs, swapped into the running Serve deployment in place): the
rows of the step after the swap carry the new reward-model version.
"""

import json
import socket

import pytest
from ray import serve

from mmrlhf.config import load_config
from mmrlhf.controller import train_loop
from mmrlhf.feedback.labeling_app import APP_NAME, build_labeling_app, deploy_labeling
from mmrlhf.feedback.tasks import load_tasks
from mmrlhf.stages.data import load_split, prepare_data
from mmrlhf.stages.feedback_import import run_feedback_import
from mmrlhf.stages.feedback_sample import run_feedback_sample
from mmrlhf.stages.reward_train import run_reward_training
from mmrlhf.stages.rl import rl_system, swap_reward_weights
from mmrlhf.stages.sft import run_sft
from tests.feedback.browser import CHROMIUM, label_one, showings

from .conftest import TINY

pytestmark = pytest.mark.ray
TOKEN = "loop-annotator-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def label_every_showing(tasks_dir) -> list[tuple]:
    """One scripted person answers every showing on the page, picking the response of higher gold score."""
    from playwright.sync_api import sync_playwright

    gold = {frozenset((r["response_a"], r["response_b"])): {r["response_a"]: r["gold_a"], r["response_b"]: r["gold_b"]}
            for r in load_tasks(tasks_dir).rows}

    def better(texts: list[str]) -> int:
        scores = gold[frozenset(texts)]
        return int(scores[texts[1]] > scores[texts[0]])

    url = deploy_labeling(build_labeling_app(tasks_dir, TOKEN), "127.0.0.1", free_port())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_context().new_page()
                page.goto(f"{url}?token={TOKEN}&annotator=person1")
                return [label_one(page, n, better) for n in range(showings(page))]
            finally:
                browser.close()
    finally:
        serve.delete(APP_NAME)


def test_page_answers_train_the_reward_model_that_rl_uses_and_refreshes_in_place(ray_cluster, tmp_path, capsys):
    assert CHROMIUM, "no chromium executable: install Debian's package (apt-get install -y chromium)"
    # Serve's HTTP options are fixed when it starts: earlier tests in this session ran it without a proxy
    serve.shutdown()
    cfg = load_config(TINY, [f"run_dir={tmp_path / 'run'}", "feedback.n_prompts=8", "feedback.samples_per_prompt=3",
                             "reward.val_fraction=0.25"])
    prepare_data(cfg)
    run_sft(cfg)
    tasks_dir = run_feedback_sample(cfg, "pairwise", gold_fraction=0.2)
    n_tasks = len(load_tasks(tasks_dir).rows)

    answered = label_every_showing(tasks_dir)
    assert len(answered) > n_tasks  # every pair, and at least one repeat with sides swapped
    assert run_feedback_import(cfg, tasks_dir, "page") == n_tasks  # one pair per task; repeats give none
    metrics = run_reward_training(cfg)
    out = capsys.readouterr().out
    assert f"reward: held-out pairwise accuracy {metrics['reward/val_accuracy']:.3f} on {metrics['reward/val_pairs']} pairs" in out
    assert metrics["reward/val_pairs"] > 0 and 0.0 <= metrics["reward/val_accuracy"] <= 1.0
    assert metrics["reward/version"] == 0

    references = dict(zip(*(load_split(cfg, "feedback").column(c).to_pylist() for c in ("id", "reference"))))
    versions, refreshed = [], {}

    def on_step(step, step_metrics, rollout):
        versions.append(rollout.reward_version.tolist())
        if step == 0:  # new pairs while RL runs: each record's reference over a sample that differs from it
            new_pairs = tmp_path / "new_pairs.jsonl"
            new_pairs.write_text("".join(json.dumps({"prompt_id": p, "chosen": references[p], "rejected": t,
                                                     "annotator": "person1"}) + "\n"
                                         for p, t in zip(rollout.prompt_ids, rollout.texts) if t != references[p]))
            # force: the reward model and this RL stage are made from feedback/; the append is meant for them
            run_feedback_import(cfg, new_pairs, "pairwise", append=True, force=True)
            refreshed.update(run_reward_training(cfg, append=True))
            swap_reward_weights(cfg, refreshed["reward/version"])

    with rl_system(cfg) as system:
        train_loop(cfg.rl, system.prompts, system.rollout_group, system.learner_group, system.weight_sync,
                   system.kl_controller, on_step)
    rows = cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt
    assert refreshed["reward/version"] == 1
    assert versions == [[0] * rows, [1] * rows]  # every row scored after the swap names the new weights
