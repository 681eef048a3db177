"""benchmarks/rollout_scaling.py --quick runs end to end and reports every set-up with finite rates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_rollout_scaling_quick_reports_three_setups(tmp_path):
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    subprocess.run([sys.executable, "rollout_scaling.py", "--quick", "--root", str(tmp_path), "--json", str(out)],
                   cwd=BENCH, env=env, check=True, timeout=300)
    result = json.loads(out.read_text())
    assert [row[0] for row in result["rows"]] == ["1 worker x 1 thread", "1 worker x 2 threads", "2 workers x 1 thread"]
    samples_per_s = [row[3] for row in result["rows"]]
    assert all(math.isfinite(v) and v > 0 for v in samples_per_s)
    assert all(math.isfinite(row[5]) for row in result["rows"][:2])  # efficiency against each 1-worker baseline
