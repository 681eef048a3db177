"""One tiny run directory (SFT policy and reward model, built with the real stages) for every
benchmark smoke test, and a helper that runs a benchmark script and reads its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> str:
    sys.path.insert(0, str(BENCH))
    try:
        from rundir import prepared_run

        return prepared_run(None, tmp_path_factory.mktemp("bench") / "run").run_dir
    finally:
        sys.path.remove(str(BENCH))


def run_benchmark(script: str, tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    """Run ``benchmarks/<script> ARGS --json tmp_path/report.json`` to completion; its JSON report."""
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    subprocess.run([sys.executable, script, *args, "--json", str(out)],
                   cwd=BENCH, env=env, check=True, timeout=timeout)
    return json.loads(out.read_text())
