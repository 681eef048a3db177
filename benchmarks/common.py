"""Shared pieces of the benchmark scripts: the machine line, alternating rounds, a Markdown table.

Every script in ``benchmarks/`` prints its figures as a Markdown table of values measured side by
side in one run, the machine and library versions below it, and can write the same as JSON
(``--json PATH``) for ``benchmarks/run_all.py``, which gathers them into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path


def machine() -> str:
    """One line naming the CPU, its core count, Python, torch, Ray, DeepSpeed and transformers."""
    import deepspeed
    import ray
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), cpu) if Path("/proc/cpuinfo").exists() else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{model}, {os.cpu_count()} CPUs, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"ray {ray.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")


def alternating(runs: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each named measurement once per round, in turn, after ``warmup`` discarded rounds.

    Alternating (A, B, A, B, ...) rather than (A, A, ..., B, B, ...) spreads slow drifts of the
    machine (other load, thermal state) over every contender. Returns each name's ``rounds`` values.
    Raises ``ValueError`` for ``rounds < 1``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    values: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + rounds):
        for name, run in runs.items():
            value = run()
            if round_index >= warmup:
                values[name].append(value)
    return values


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are printed with 3 significant digits."""
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str],
           json_path: str | None) -> str:
    """Print (and with ``json_path`` also save as JSON) one benchmark's table, notes and machine line.

    Returns the Markdown text: a ``### title`` heading, the table, the notes and the machine.
    """
    text = "\n".join([f"### {title}", "", table(header, rows), "", *notes, "", f"machine: {machine()}", ""])
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps({"title": title, "header": list(header), "rows": [list(r) for r in rows],
                                               "notes": list(notes), "markdown": text}, indent=1, default=str))
    return text
