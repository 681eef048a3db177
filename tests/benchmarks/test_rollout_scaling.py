"""benchmarks/rollout_scaling.py --quick runs end to end and reports every set-up with finite rates."""

from __future__ import annotations

import math

from .conftest import run_benchmark


def test_rollout_scaling_quick_reports_three_setups(tmp_path, tiny_run_dir):
    result = run_benchmark("rollout_scaling.py", tmp_path, "--quick", "--run-dir", tiny_run_dir, "--root", str(tmp_path),
                           timeout=300)
    assert [row[0] for row in result["rows"]] == ["1 worker x 1 thread", "1 worker x 2 threads", "2 workers x 1 thread"]
    samples_per_s = [row[3] for row in result["rows"]]
    assert all(math.isfinite(v) and v > 0 for v in samples_per_s)
    assert all(math.isfinite(row[5]) for row in result["rows"][:2])  # efficiency against each 1-worker baseline
