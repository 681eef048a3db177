"""benchmarks/reward_serving.py --quick runs end to end: each batch size, in-process and Serve's no-op
ceiling, both request shapes."""

from __future__ import annotations

import math

from .conftest import run_benchmark


def test_reward_serving_quick_reports_each_batch_size_and_in_process_for_both_shapes(tmp_path):
    rows = run_benchmark("reward_serving.py", tmp_path, "--quick")["rows"]
    assert [row[1] for row in rows] == ["batch 1", "batch 8", "batch 32", "in-process", "no-op scorer, batch 32"] * 2
    assert [row[0] for row in rows[::5]] == ["1 item/request, concurrency 64",
                                            "16 items/request (a rollout), concurrency 2"]
    for row in rows:
        assert all(math.isfinite(v) and v > 0 for v in row[2:]), row
        assert row[5] >= row[4]  # p99 >= p50
    assert all(row[6] == 1.0 for row in rows[::5]) and all(row[7] == 1.0 for row in rows[3::5])
