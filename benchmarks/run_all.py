"""Run the CPU benchmark set and write ``benchmarks/RESULTS.md``: every table with its command and machine.

Each script runs in its own process with ``--json`` and the same run directory: ``--run-dir``
or, by default, one built here from the default job's presets (``jobs/digits.yaml``, the
``small`` policy) with short SFT and reward training, since throughput does not depend on how
well the policy reads digits. The tables are measured side by side within each script; the
scripts run one after another, so compare ratios, not figures across tables.

    python benchmarks/run_all.py [--run-dir runs/digits] [--out benchmarks/RESULTS.md] [--only vs_trl.py ...]

With ``--only`` the other scripts' sections of an existing RESULTS.md are kept as they are, and so
is everything below its notes mark (the analysis of missed targets, written by people).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rundir import prepared_run

HERE = Path(__file__).resolve().parent
QUICK_TRAINING = ["sft.epochs=2", "sft.vision_warmup_epochs=1", "feedback.n_prompts=32", "reward.epochs=1",
                  "reward.clip_epochs=1"]
MARK = "<!-- benchmarks/{} -->"
NOTES = "<!-- notes: written by people, kept by run_all.py -->"
RUN = "RUN"  # stands for the run directory in SCRIPTS' arguments
SCRIPTS = {  # script: its arguments beyond --json
    "vs_trl.py": ["--run-dir", RUN, "--rounds", "3"],
    "ray_overhead.py": ["--run-dir", RUN, "--rounds", "3"],
    "rollout_scaling.py": ["--run-dir", RUN, "--rounds", "5"],
    "reward_serving.py": ["--rounds", "3"],
    "weight_sync.py": ["--rounds", "5"],
    "scale_model.py": ["--run-dir", RUN],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run directory with an SFT policy and a reward model")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", nargs="*", default=None, help="scripts to run (default: all)")
    args = parser.parse_args()
    sections = {script: text for script, text in kept_sections(Path(args.out)).items() if script in SCRIPTS}
    chosen = {script: extra for script, extra in SCRIPTS.items() if not args.only or script in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir
        if run_dir is None and any(RUN in extra for extra in chosen.values()):
            run_dir = str(Path(tmp) / "run")
            prepared_run(None, Path(run_dir), str(HERE.parent / "jobs" / "digits.yaml"), QUICK_TRAINING)
        for script, extra in chosen.items():
            out = Path(tmp) / f"{script}.json"
            command = [sys.executable, script, *(run_dir if a == RUN else a for a in extra), "--json", str(out)]
            start = time.perf_counter()
            subprocess.run(command, cwd=HERE, check=True)
            result = json.loads(out.read_text())
            shown = " ".join(["python", f"benchmarks/{script}", *extra])
            sections[script] = (f"{MARK.format(script)}\n{result['markdown']}\ncommand: `{shown}` "
                                f"({time.perf_counter() - start:.0f} s, {time.strftime('%Y-%m-%d')})\n")
    Path(args.out).write_text("\n".join([
        "# Benchmark results", "",
        "Written by `python benchmarks/run_all.py`; RUN is a run directory of the default job's presets (see the "
        "script). Ratios are measured side by side within each table; each table names its machine.", "",
        *sections.values(), NOTES + kept_notes(Path(args.out))]))
    print(f"wrote {args.out}")


def kept_sections(path: Path) -> dict[str, str]:
    """The sections of an existing RESULTS.md by script, in order (a ``--only`` run replaces its own)."""
    if not path.exists():
        return {}
    parts = path.read_text().split(NOTES)[0].split("<!-- benchmarks/")[1:]
    return {part.split(" -->", 1)[0]: "<!-- benchmarks/" + part for part in parts}


def kept_notes(path: Path) -> str:
    """What people wrote below the ``NOTES`` mark of an existing RESULTS.md (kept as it is)."""
    text = path.read_text() if path.exists() else ""
    return text.split(NOTES, 1)[1] if NOTES in text else "\n## Targets missed: where the time goes\n"


if __name__ == "__main__":
    main()
