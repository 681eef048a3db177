"""benchmarks/ray_overhead.py --quick, one-process side (the Ray side is mmrlhf_rl.py, which
test_vs_trl runs): the controller's loop over plain rollout-worker and learner-rank objects
trains, syncs weights and reports its phases."""

from __future__ import annotations

from .conftest import run_benchmark


def test_one_process_contender_runs_the_same_loop_without_ray(tmp_path, tiny_run_dir):
    result = run_benchmark("ray_overhead.py", tmp_path, "--quick", "--run-dir", tiny_run_dir, "--root", str(tmp_path),
                           "--only", "one process")
    (row,) = [dict(zip(result["header"], row)) for row in result["rows"]]
    assert row["contender"] == "one process"
    assert row["completions/s"] > 0 and row["update s"] > 0 and row["score s"] > 0
    assert row["sync s"] > 0  # the learner's weights reach the rollout worker every step
