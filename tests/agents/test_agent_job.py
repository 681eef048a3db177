"""`mmrlhf agent train` submitted with `ray job submit` semantics (JobSubmissionClient) to a real head
with token auth, as `tests/ops/test_ray_job.py` does for the RLHF job (its head and helpers)."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from ray.job_submission import JobStatus

from tests.ops.test_ray_job import POLL_S, ROOT, _client, _finished, _head, _scrape

AGENT_SERIES = {"ray_mmrlhf_agent_learned_return", "ray_mmrlhf_agent_true_return", "ray_mmrlhf_agent_pairs",
                "ray_mmrlhf_agent_reward_accuracy", "ray_mmrlhf_agent_env_steps"}
SMALL = ("env.num_envs=2 env.frame_size=32 reward_cpus=0.25 rl.env_steps=400 rl.train_batch_size=200 "
         "rl.minibatch_size=50 rl.num_epochs=1 preferences.initial_pairs=4 preferences.initial_env_steps=80 "
         "preferences.pairs_per_round=4 "
         "preferences.candidates=8 preferences.train_steps=2 preferences.retrain_every=1 preferences.rounds=1")


@pytest.mark.timeout(900)
def test_submitted_cartpole_agent_job_succeeds_swaps_the_reward_and_exports_agent_metrics(tmp_path):
    run_dir = tmp_path / "run"
    runtime_env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(ROOT)
    with _head(num_cpus=4) as head:
        client = _client(head, head["token"])
        job = client.submit_job(entrypoint=f"mmrlhf agent train --config jobs/agent_cartpole.yaml run_dir={run_dir} "
                                f"{SMALL}", runtime_env=runtime_env)
        scraped: set[str] = set()
        while not _finished(status := client.get_job_status(job)):
            scraped |= _scrape(head["metrics"])
            time.sleep(POLL_S)
        logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    rows = [json.loads(line) for line in (run_dir / "agent" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] >= 400 and rows[-1]["pairs"] == 8  # 4 initial + 1 round of 4
    assert rows[-1]["reward/version"] == 2  # v0 untrained, v1 after the first queries, v2 after the round
    assert (run_dir / "agent" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "agent" / "clips" / "round2_a.png").read_bytes()[:4] == b"\x89PNG"
    assert AGENT_SERIES <= scraped, f"missing: {sorted(AGENT_SERIES - scraped)}"
