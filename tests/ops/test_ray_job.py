"""The default job, `tiny` presets, submitted to a real head with token auth, and its metrics scraped.

One head for the module (`ray start --head` on loopback, token auth, dashboard and metrics on
free ports, its own temp dir). Token auth as Ray 2.60 does it (`ray/_private/authentication/`):
`ray start` with RAY_AUTH_MODE=token takes the token from RAY_AUTH_TOKEN; every process the head
starts (raylet, workers, the job's driver) inherits both. `JobSubmissionClient` sends
`Authorization: Bearer <token>` (from `headers`, else from this process's own auth config); the
dashboard answers 401 without a token and 403 for a wrong one, and the client raises
`ray.exceptions.AuthenticationError` with that status's text.

Teardown kills, by pid, every process whose command line names the head's temp dir and all their
descendants (never `ray stop`, which would stop every Ray cluster of this user on the machine),
then checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "cluster" / "grafana_dashboard.json"
KILL_GRACE_S = 15.0
POLL_S = 2.0
# Every mmrlhf_* metric the code defines, as Ray exports it (Ray adds `ray_`; histograms
# export _bucket/_sum/_count, counters _total).
EXPECTED_SERIES = {
    "ray_mmrlhf_reward_mean", "ray_mmrlhf_gold_mean", "ray_mmrlhf_kl", "ray_mmrlhf_entropy",
    "ray_mmrlhf_policy_version", "ray_mmrlhf_policy_lag", "ray_mmrlhf_samples_per_second",
    "ray_mmrlhf_tokens_per_second", "ray_mmrlhf_reward_latency_seconds_bucket",
    "ray_mmrlhf_weight_sync_seconds_bucket", "ray_mmrlhf_rl_step_seconds_bucket",
    "ray_mmrlhf_stage_seconds", "ray_mmrlhf_rl_steps_total",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names `temp_dir`, with all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            try:
                found.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
            except psutil.NoSuchProcess:
                continue  # exited between the listing and the walk: nothing left to stop
    return list(found.values())


def _stop(temp_dir: str) -> list[str]:
    """Terminate, then kill, the head's processes; returns those still alive afterwards."""
    for signal_them in (psutil.Process.terminate, psutil.Process.kill):
        procs = _processes_of(temp_dir)
        for proc in procs:
            try:
                signal_them(proc)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=KILL_GRACE_S)
    return [f"{p.pid} ({p.name()})" for p in _processes_of(temp_dir)]


@contextlib.contextmanager
def _head(num_cpus: int):
    """A head on 127.0.0.1 with token auth and `num_cpus` logical CPUs; yields dict(token, dashboard URL, metrics URL, env)."""
    # Unix socket paths are capped at 107 bytes, so the temp dir sits high in /tmp.
    temp_dir = tempfile.mkdtemp(prefix="mmrlhf-head-", dir="/tmp")
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `mmrlhf` for the entrypoint
               RAY_metrics_report_interval_ms="2000")  # export every 2 s instead of 10 s: a short run shows up
    dashboard_port, metrics_port = _free_port(), _free_port()
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--metrics-export-port={metrics_port}", f"--ray-client-server-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
               "--disable-usage-stats"]
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"token": token, "dashboard": f"http://127.0.0.1:{dashboard_port}",
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "env": env}
    finally:
        survivors = _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"ray_head teardown: still alive after kill: {survivors}"


@pytest.fixture(scope="module")
def ray_head():
    """A 4-CPU head: room for the tiny job's actors."""
    with _head(num_cpus=4) as head:
        yield head


def _client(head, token: str) -> JobSubmissionClient:
    return JobSubmissionClient(head["dashboard"], headers={"Authorization": f"Bearer {token}"})


def _submit_tiny(head, run_dir: Path) -> tuple[JobSubmissionClient, str]:
    """Submit `mmrlhf train --config jobs/tiny.yaml` as the README shows; returns the client and job id."""
    runtime_env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(ROOT)  # the YAML's "." is relative to where `ray job submit` runs
    client = _client(head, head["token"])
    return client, client.submit_job(entrypoint=f"mmrlhf train --config jobs/tiny.yaml run_dir={run_dir}",
                                     runtime_env=runtime_env)


def _finished(status: JobStatus) -> bool:
    return status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def _scrape(url: str) -> set[str]:
    """Names of the mmrlhf series the metrics agent serves now."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line.startswith("ray_mmrlhf_")}


def _grafana_metrics() -> list[set[str]]:
    """For each panel query of the Grafana dashboard, the mmrlhf metric names it reads."""
    panels = json.loads(GRAFANA.read_text())["panels"]
    return [set(re.findall(r"ray_mmrlhf_[a-z_]+", target["expr"])) for panel in panels for target in panel["targets"]]


def test_submission_without_the_token_is_refused_with_401(ray_head, tmp_path):
    # A fresh interpreter with no token anywhere: no RAY_AUTH_* variables and an empty home
    # (so no ~/.ray/auth_token), as an outsider on the same network would be.
    env = {k: v for k, v in ray_head["env"].items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}
    script = ("from ray.job_submission import JobSubmissionClient\n"
              "from ray.exceptions import AuthenticationError\n"
              "try:\n"
              f"    JobSubmissionClient({ray_head['dashboard']!r}).submit_job(entrypoint='mmrlhf train')\n"
              "except AuthenticationError as err:\n"
              "    print(str(err).splitlines()[0])\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "Authentication required: Unauthorized: Missing authentication token", out.stderr[-2000:]


def test_submission_with_a_wrong_token_is_refused_with_403(ray_head):
    with pytest.raises(AuthenticationError, match="Forbidden: Invalid authentication token"):
        _client(ray_head, "0" * 64).submit_job(entrypoint="mmrlhf train")


@pytest.mark.timeout(900)
def test_tiny_job_succeeds_writes_run_artifacts_and_exports_mmrlhf_metrics(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    client, job = _submit_tiny(ray_head, run_dir)

    scraped: set[str] = set()
    while not _finished(status := client.get_job_status(job)):
        scraped |= _scrape(ray_head["metrics"])  # gauges are served while the driver lives
        time.sleep(POLL_S)
    scraped |= _scrape(ray_head["metrics"])
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-4000:]

    rl_lines = (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rl_lines] == [0, 1]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "rl" / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "| gold score |" in (run_dir / "results.md").read_text()
    stages = [json.loads(line)["stage"] for line in (run_dir / "stages.jsonl").read_text().splitlines()]
    assert stages == ["data", "sft", "feedback", "reward", "rl", "eval"]

    assert EXPECTED_SERIES <= scraped, f"missing: {sorted(EXPECTED_SERIES - scraped)}"
    for names in _grafana_metrics():
        assert names and names <= scraped, f"Grafana query reads {sorted(names)}, scrape found {sorted(scraped)}"


@pytest.mark.timeout(600)
def test_tiny_job_on_a_head_too_small_is_refused_before_any_stage_naming_the_resources(tmp_path):
    # tiny.yaml's actors need 1.25 logical CPUs (2 rollout workers, 2 learner ranks, 1 reward replica x 0.25)
    run_dir = tmp_path / "run"
    with _head(num_cpus=1) as small_head:
        client, job = _submit_tiny(small_head, run_dir)
        while not _finished(status := client.get_job_status(job)):
            time.sleep(POLL_S)
        logs = client.get_job_logs(job)
    assert status == JobStatus.FAILED, logs[-4000:]
    assert ("mmrlhf train: rl: the configured actors need CPU 1.25 (the cluster has 1): rl.rollout_workers=2 x "
            "resources.rollout_cpus=0.25; rl.learner_ranks=2 x resources.learner_cpus=0.25; reward.min_replicas=1 x "
            "resources.reward_cpus=0.25.") in logs, logs[-4000:]
    assert not (run_dir / "data").exists() and not (run_dir / "sft").exists()  # refused before the first stage
