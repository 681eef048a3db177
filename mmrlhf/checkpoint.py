"""Checkpoints of the RL stage: one folder per step, a ``latest`` pointer written last.

Layout under ``<run_dir>/rl/checkpoints/``::

    step_<n>/model.safetensors   full actor-critic weights (policy + value head), from learner rank 0
    step_<n>/deepspeed/...        DeepSpeed's per-rank files (module, ZeRO optimizer partitions)
    step_<n>/rng_rank<r>.json     learner rank r's RNG states
    step_<n>/state.json           run state: step, policy version, prompt position, KL controller,
                                  weights hash, the run's config
    latest                        the name of the newest complete folder, e.g. "step_4"

Commit protocol (the one DeepSpeed and Orbax use): everything goes into ``.step_<n>.partial/``;
that folder is renamed to ``step_<n>`` (atomic on POSIX), then ``latest`` is replaced through a
temporary file and ``os.replace``. A crash at any point before the last rename leaves ``latest``
on the previous complete checkpoint, so a torn save is never resumed; the next save removes the
leftovers. The learner ranks write into the checkpoint folder themselves, so on a multi-node
cluster it must be on a filesystem every node mounts.

Nothing here imports Ray: the learner group, prompt source, KL controller and weight sync come in
as arguments.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from mmrlhf.config import RunConfig, to_dict
from mmrlhf.stages.common import write_text_atomic

LATEST = "latest"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# Settings a resumed run may change: they do not alter what the next step computes.
RESUMABLE_CHANGES = ("rl.steps", "rl.checkpoint_every", "rl.keep_checkpoints", "run_dir", "resources.",
                     "eval.", "reward.health_check_", "reward.score_", "reward.min_replicas",
                     "reward.max_replicas", "reward.target_ongoing_requests", "reward.http")
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointDir:
    """The checkpoints of one run: save a step atomically, find the newest complete one.

    Args:
        root: ``<run_dir>/rl/checkpoints``.
        keep: how many complete checkpoints to keep (>= 1); older ones are deleted after a save.
    """

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"CheckpointDir: keep={keep}, must be >= 1")
        self.root, self.keep = Path(root), keep

    def latest(self) -> Path | None:
        """The folder ``latest`` names, or None when no checkpoint was completed.

        Raises:
            FileNotFoundError: ``latest`` names a folder without ``state.json`` (changed by hand).
        """
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which has no {STATE_FILE}: "
                                    "the checkpoint folder was changed outside mmrlhf")
        return path

    def save(self, step: int, write: Callable[[Path], dict[str, Any]]) -> Path:
        """Write checkpoint ``step_<step>``: ``write(folder)`` fills the folder and returns the run
        state, which goes to ``state.json``. Returns the final folder.

        If ``write`` raises (or the process dies) ``latest`` is untouched and the partial folder
        is left for the next save to remove.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".step_{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        state = write(partial)
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        final = self.root / f"step_{step}"
        if final.exists():  # left by a run that died after this step and was resumed from before it
            shutil.rmtree(final)
        partial.rename(final)
        write_text_atomic(self.root / LATEST, final.name)  # the commit point
        self._prune(final)
        return final

    def _prune(self, newest: Path) -> None:
        """Keep the ``keep`` newest complete checkpoints; drop torn folders and abandoned ones.

        A step folder without ``state.json`` is torn; one numbered above ``newest`` was written
        by a run that died after it without moving ``latest`` there, and was resumed from before.
        """
        newest_step = int(_STEP_DIR.fullmatch(newest.name).group(1))
        complete = []
        for path in self.root.iterdir():
            match = _STEP_DIR.fullmatch(path.name)
            if match is None or path == newest:
                continue
            if int(match.group(1)) > newest_step or not (path / STATE_FILE).is_file():
                shutil.rmtree(path)
            else:
                complete.append((int(match.group(1)), path))
        for _, old in sorted(complete)[:max(0, len(complete) - (self.keep - 1))]:
            shutil.rmtree(old)
        for leftover in self.root.glob(".step_*.partial"):
            shutil.rmtree(leftover)


def read_state(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """The run state of checkpoint ``path``, after checking that ``cfg`` may continue it.

    Raises:
        ValueError: the checkpoint was written by another format version, or ``cfg`` changes a
            setting that alters the run (seed, data, models, PPO settings...); lists each one.
    """
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / STATE_FILE}: format {state.get('format')!r}, expected {FORMAT_VERSION}")
    changed = config_changes(state["config"], to_dict(cfg))
    if changed:
        raise ValueError(f"cannot resume from {path}: the config changes {'; '.join(changed)} "
                         f"(only {', '.join(RESUMABLE_CHANGES)} may change on a resume)")
    return state


def config_changes(saved: dict, current: dict, prefix: str = "", saved_as: str = "checkpoint") -> list[str]:
    """``"key: <saved_as> X, now Y"`` for each leaf that differs, except ``RESUMABLE_CHANGES``."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        name, old, new = f"{prefix}{key}", saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{name}.", saved_as)
        elif old != new and not name.startswith(RESUMABLE_CHANGES):
            changes.append(f"{name}: {saved_as} {old!r}, now {new!r}")
    return changes


def save_run(checkpoints: CheckpointDir, step: int, cfg: RunConfig, learner_group, prompts,
             kl_controller) -> Path:
    """Checkpoint the run after ``step`` completed steps (policy version ``step``).

    ``learner_group.save_checkpoint(folder)`` writes the weights, DeepSpeed state and RNG of every
    rank and returns the weights' hash; the driver adds the prompt position and KL controller.
    The rollout workers need no state: their sampling is seeded by (seed, step, worker index).
    """
    def write(folder: Path) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "step": step, "policy_version": step,
                "weights_sha256": learner_group.save_checkpoint(folder), "prompts": prompts.state_dict(),
                "kl_controller": kl_controller.state_dict(), "config": to_dict(cfg)}

    return checkpoints.save(step, write)


def restore_run(path: Path, state: dict[str, Any], learner_group, prompts, kl_controller, weight_sync) -> int:
    """Load checkpoint ``path`` (its ``state`` from :func:`read_state`) into the parts of a run.

    The learner ranks load their DeepSpeed state and RNG; the weights they then hold must hash
    to the ``model.safetensors`` recorded at save time; the rollout workers receive them as
    policy version ``state["policy_version"]``. Returns the number of completed steps.

    Raises:
        ValueError: the learner's weights after loading differ from the saved ones.
    """
    digest = learner_group.load_checkpoint(path)
    if digest != state["weights_sha256"]:
        raise ValueError(f"checkpoint {path}: the DeepSpeed state loads weights with hash {digest[:12]}, "
                         f"but {WEIGHTS_FILE} was saved with {state['weights_sha256'][:12]}")
    prompts.load_state_dict(state["prompts"])
    kl_controller.load_state_dict(state["kl_controller"])
    weight_sync.publish(learner_group, version=state["policy_version"])
    return int(state["step"])


def truncate_log(path: Path, steps: int) -> None:
    """Keep the JSONL lines of ``path`` whose ``"step"`` is below ``steps`` (delete it for 0).

    After a resume from step ``steps`` the later steps run again, so their old lines go.
    """
    if not path.exists():
        return
    if steps == 0:
        path.unlink()
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < steps]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
