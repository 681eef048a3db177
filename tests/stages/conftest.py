"""Run directories shared by the stage tests, made by the real stages with the `tiny` presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrlhf.config import RunConfig, load_config
from mmrlhf.stages.data import load_split, prepare_data
from mmrlhf.stages.feedback_import import run_feedback_import
from mmrlhf.stages.reward_train import run_reward_training

TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny.yaml"


def import_reference_pairs(cfg: RunConfig, folder: Path) -> None:
    """Build the splits and import one pair per feedback record: its reference chosen over the
    reference with " one" appended (a file in ``folder``, through ``feedback import``)."""
    prepare_data(cfg)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt_id": r["id"], "chosen": r["reference"],
                                         "rejected": r["reference"] + " one"}) + "\n"
                             for r in load_split(cfg, "feedback").to_pylist()))
    run_feedback_import(cfg, pairs, "pairwise")


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory) -> RunConfig:
    """A tiny digits run with its splits and a trained reward model (pairs from the references;
    no SFT policy). Tests read it; those that write go to their own folders."""
    folder = tmp_path_factory.mktemp("reward_run")
    cfg = load_config(TINY, [f"run_dir={folder / 'run'}"])
    import_reference_pairs(cfg, folder)
    run_reward_training(cfg)
    return cfg
