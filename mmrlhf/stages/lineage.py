"""Stage lineage: what each stage's output was made from, and the refusals that keep stages consistent.

Every stage writes ``<its output folder>/lineage.json`` beside its output (``data/``, ``sft/``,
``feedback/``, ``reward/``, ``rl/``, ``eval/<policy>/``)::

    {"stage": "sft", "command": "mmrlhf sft", "keys": ["seed", "model.policy", "sft"],
     "config": {"seed": 0, "model": {"policy": "tiny"}, "sft": {...}},   # the sections it read
     "inputs": {"data/sft.parquet": "<sha256>", ...}}                    # the files it read

An input inside the run directory is named relative to it; another stage's output is named by its
``lineage.json`` (``"sft/lineage.json"``), whose hash changes exactly when that stage is re-made
from other settings or inputs. Files outside the run directory (the user's data file, a feedback
file) are named by their absolute path.

Two checks, both one-line :class:`StaleOutputError` naming the output and the command to re-run,
both skipped with ``force``:

* :func:`check_current` — before a stage reads an output, that output (and, recursively, what it
  was made from) still matches the current config and input files;
* :func:`check_no_dependents` — a stage about to replace its output with one made differently is
  refused while other stages' outputs were made from it (evaluations, reports that every
  ``mmrlhf eval`` rewrites, do not count).

Config sections are compared with :func:`mmrlhf.checkpoint.config_changes`, as ``mmrlhf train``
compares a run directory's ``config.yaml`` (settings a resume may change are not differences).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrlhf.checkpoint import config_changes
from mmrlhf.config import RunConfig, to_dict
from mmrlhf.stages.common import write_json

LINEAGE_FILE = "lineage.json"
_CHUNK = 1 << 20


class StaleOutputError(ValueError):
    """An output that no longer matches what it was made from, or that others were made from."""


@dataclass(frozen=True)
class Stage:
    """One stage's output folder (relative to the run directory), command and config keys.

    ``keys``: top-level keys or dotted ``section.key`` names of :class:`mmrlhf.config.RunConfig`
    that the stage reads; they are recorded and compared.
    """

    name: str
    folder: str
    command: str
    keys: tuple[str, ...]


DATA = Stage("data", "data", "mmrlhf data", ("data",))
SFT = Stage("sft", "sft", "mmrlhf sft", ("seed", "model.policy", "sft"))
FEEDBACK_SIMULATE = Stage("feedback", "feedback", "mmrlhf feedback simulate",
                          ("seed", "feedback", "sft.max_new_tokens"))
# the training keys only: the Serve settings of `reward` (batching, replicas, health checks) do not
# change the model
REWARD = Stage("reward", "reward", "mmrlhf reward train",
               ("seed", "model.reward", "model.reward_pretrained",
                *(f"reward.{key}" for key in ("clip_epochs", "clip_lr", "hard_negatives", "clip_shift_px", "epochs",
                                              "batch_size", "lr", "val_fraction"))))
RL = Stage("rl", "rl", "mmrlhf rl", ("seed", "rl"))


def feedback_import_stage(path: str | Path, kind: str) -> Stage:
    """The feedback stage as ``mmrlhf feedback import`` makes it (no config keys: the file is the input)."""
    return Stage("feedback", "feedback", f"mmrlhf feedback import {path} --kind {kind}", ())


def eval_stage(label: str) -> Stage:
    """The evaluation of one policy (``sft``, ``rl``, ``init`` or a folder's name)."""
    return Stage("eval", f"eval/{label}", f"mmrlhf eval --policy {label}", ("eval",))


def file_sha256(path: Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, or None when it does not exist."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def config_section(cfg: RunConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The parts of ``cfg`` named by ``keys`` (``"seed"``, ``"sft"``, ``"model.policy"``) as a nested dict."""
    full, out = to_dict(cfg), {}
    for key in keys:
        *sections, leaf = key.split(".")
        source, target = full, out
        for section in sections:
            source, target = source[section], target.setdefault(section, {})
        target[leaf] = source[leaf]
    return out


def _input_name(run_dir: Path, path: Path) -> str:
    """How lineage names an input: relative to the run directory when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _input_path(run_dir: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else run_dir / name


def lineage_of(cfg: RunConfig, stage: Stage, inputs: list[Path]) -> dict[str, Any]:
    """The lineage record of ``stage`` made now from ``inputs`` (files; missing ones hash to None)."""
    run_dir = Path(cfg.run_dir)
    return {"stage": stage.name, "command": stage.command, "keys": list(stage.keys),
            "config": config_section(cfg, stage.keys),
            "inputs": {_input_name(run_dir, p): file_sha256(Path(p)) for p in inputs}}


def stage_input(cfg: RunConfig, stage: Stage) -> Path:
    """The input file that stands for another stage's output: its ``lineage.json``."""
    return Path(cfg.run_dir) / stage.folder / LINEAGE_FILE


def read_lineage(run_dir: Path, folder: str) -> dict[str, Any] | None:
    """The lineage written in ``run_dir/folder``, or None when there is none (an older run)."""
    path = Path(run_dir) / folder / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_lineage(cfg: RunConfig, record: dict[str, Any], folder: str) -> None:
    """Write ``record`` (from :func:`lineage_of`) as ``<run_dir>/<folder>/lineage.json``, atomically."""
    write_json(Path(cfg.run_dir) / folder / LINEAGE_FILE, record)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two lineage records, one phrase each: config keys, then input files."""
    changed = config_changes(old["config"], new["config"], saved_as="made with")
    for name in sorted(set(old["inputs"]) | set(new["inputs"])):
        if old["inputs"].get(name) != new["inputs"].get(name):
            changed.append(f"{_display(name)} {'changed' if name in new['inputs'] else 'is no longer an input'}")
    return changed


def _display(name: str) -> str:
    """``sft/lineage.json`` reads as ``sft/`` (the output it stands for)."""
    return name[: -len(LINEAGE_FILE)] if name.endswith("/" + LINEAGE_FILE) else name


def check_current(cfg: RunConfig, folder: str, force: bool = False) -> None:
    """Refuse to read the output in ``<run_dir>/folder`` if it no longer matches what made it.

    Checks, upstream first, every stage output it was made from (the run-directory folders of
    its inputs), then the output itself: the recorded config keys against ``cfg`` and each recorded input file's hash against the file
    now. An output without a lineage (made before lineages existed) is taken as current.

    Raises:
        StaleOutputError: ``"<folder>/ is stale (<what changed>): re-run `<command>` ..."``, unless ``force``.
    """
    if force:
        return
    run_dir = Path(cfg.run_dir)
    old = read_lineage(run_dir, folder)
    if old is None:
        return
    for upstream in sorted({name.split("/")[0] for name in old["inputs"] if not Path(name).is_absolute()}):
        if upstream != folder.split("/")[0]:
            check_current(cfg, upstream)
    now = {"config": config_section(cfg, tuple(old["keys"])),
           "inputs": {name: file_sha256(_input_path(run_dir, name)) for name in old["inputs"]}}
    changed = differences(old, now)
    if changed:
        raise StaleOutputError(f"{folder}/ is stale ({'; '.join(changed)}): re-run `{old['command']}` to make it "
                               "again (or pass --force to use it as it is)")


def check_no_dependents(cfg: RunConfig, record: dict[str, Any], folder: str, force: bool = False) -> None:
    """Refuse to replace ``<run_dir>/folder`` with an output made differently while others were made from it.

    ``record`` is the lineage the stage is about to make (:func:`lineage_of`). Nothing is refused
    when the folder has no lineage yet, when ``record`` matches it, or with ``force``.

    Raises:
        StaleOutputError: naming the outputs made from it, what differs, and the ways out.
    """
    run_dir = Path(cfg.run_dir)
    old = read_lineage(run_dir, folder)
    if force or old is None:
        return
    changed = differences(old, record)
    if not changed:
        return
    dependents = sorted(_dependents(run_dir, folder))
    if dependents:
        raise StaleOutputError(
            f"{', '.join(d + '/' for d in dependents)} {'was' if len(dependents) == 1 else 'were'} made from "
            f"{folder}/, and `{record['command']}` would now make {folder}/ differently ({'; '.join(changed)}): "
            f"use another run_dir, remove {', '.join(d + '/' for d in dependents)}, or pass --force and re-run them")


def _dependents(run_dir: Path, folder: str) -> list[str]:
    """Stage outputs (evaluations aside) whose lineage names an input inside ``folder``."""
    out = []
    for path in run_dir.glob(f"*/{LINEAGE_FILE}"):
        other = path.parent.name
        if other in (folder, "eval"):
            continue
        inputs = json.loads(path.read_text())["inputs"]
        if any(name.split("/")[0] == folder for name in inputs):
            out.append(other)
    return out
