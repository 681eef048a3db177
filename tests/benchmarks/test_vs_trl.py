"""benchmarks/vs_trl.py --quick runs TRL's GRPOTrainer and the project's PPO and SAC loops on the
same tiny run and reports each with finite rates, a start-up time and a phase split."""

from __future__ import annotations

import math

from .conftest import run_benchmark


def test_vs_trl_quick_reports_every_contender(tmp_path, tiny_run_dir):
    result = run_benchmark("vs_trl.py", tmp_path, "--quick", "--run-dir", tiny_run_dir, "--root", str(tmp_path))
    header = result["header"]
    rows = {row[0]: dict(zip(header, row)) for row in result["rows"]}
    assert list(rows) == ["TRL GRPOTrainer", "mmrlhf PPO", "mmrlhf SAC"]
    for name, row in rows.items():
        assert row["completions/s"] > 0 and math.isfinite(row["tokens/s"]), name
        assert 0 < row["start-up s"] < 600, name
        assert row["rollout s"] > 0 and row["update s"] > 0, name
    assert rows["TRL GRPOTrainer"]["x TRL"] == 1.0
    assert all(rows[name]["sync s"] > 0 for name in ("mmrlhf PPO", "mmrlhf SAC"))  # weights reach the workers
