"""Exact resume: 4 RL steps in one go equal 2 steps, a stop, `mmrlhf train --resume` and 2 more (tiny presets).

Compared after step 4: the weights (hash of model.safetensors), every tensor of DeepSpeed's
optimizer and module state on every rank, the prompt position, the per-step metrics and the
(step, prompt, sample) ledger. A torn save of step 3 (a partial folder, and a step folder that
`latest` never named) is left in the interrupted run; the resume starts from step 2 anyway.
"""

from __future__ import annotations

import json
from collections import Counter

import torch

from mmrlhf import cli
from mmrlhf.learner.engine import SafeTorchCheckpointEngine
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.rl import run_rl

from .conftest import TINY, clone_run

DETERMINISTIC = ("learner/", "ppo/", "value/", "rollout/reward", "rollout/kl", "rollout/score", "rollout/unscored",
                 "rollout/response_tokens", "rollout/gold", "sync/version")


def _assert_same(a, b, where):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__"):  # e.g. DeepSpeed's LossScaler
        _assert_same(vars(a), vars(b), where)
    else:
        assert a == b, where


def _deepspeed_files(step_dir):
    return {p.name: SafeTorchCheckpointEngine().load(str(p)) for p in sorted((step_dir / "deepspeed").glob("*.pt"))}


def _logged(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_reproduces_uninterrupted_run(ray_cluster, tiny_run, tmp_path):
    whole = clone_run(tiny_run, tmp_path / "whole", ["rl.steps=4", "rl.checkpoint_every=2"])
    run_rl(whole)

    parts = clone_run(tiny_run, tmp_path / "parts", ["rl.steps=2", "rl.checkpoint_every=2"])
    run_rl(parts)
    ckpts = RunPaths(parts.run_dir).rl_checkpoints
    assert (ckpts / "latest").read_text() == "step_2"
    for torn in (ckpts / ".step_3.partial", ckpts / "step_3"):  # killed during the save of step 3
        (torn / "deepspeed").mkdir(parents=True)
        (torn / "model.safetensors").write_bytes(b"half a file")
    # The finished 2-step run has its policy; --resume with rl.steps=4 runs the RL stage on, then eval.
    assert cli.main(["train", "--resume", "--config", str(TINY), f"run_dir={parts.run_dir}",
                     "rl.steps=4", "rl.checkpoint_every=2"]) == 0
    assert (RunPaths(parts.run_dir).root / "results.md").exists()

    a, b = RunPaths(whole.run_dir), RunPaths(parts.run_dir)
    state_a, state_b = (json.loads((p.rl_checkpoints / "step_4" / "state.json").read_text()) for p in (a, b))
    assert state_a["weights_sha256"] == state_b["weights_sha256"]
    assert state_a["prompts"] == state_b["prompts"] and state_a["kl_controller"] == state_b["kl_controller"]
    files_a, files_b = (_deepspeed_files(p.rl_checkpoints / "step_4") for p in (a, b))
    assert any("optim_states" in name for name in files_a)
    _assert_same(files_a, files_b, "deepspeed")
    assert sorted(p.name for p in b.rl_checkpoints.iterdir()) == ["latest", "step_2", "step_4"]

    ledger_a, ledger_b = _logged(a.rl_consumed), _logged(b.rl_consumed)
    assert ledger_a == ledger_b and [row["step"] for row in ledger_b] == [0, 1, 2, 3]
    rows = Counter((row["step"], p, s) for row in ledger_b for p, s in zip(row["prompt_ids"], row["sample_index"]))
    assert set(rows.values()) == {1}  # no (step, prompt, sample) twice
    prompts_per_step = [set(row["prompt_ids"]) for row in ledger_b]
    assert len(set().union(*prompts_per_step)) == 4 * whole.rl.prompts_per_step  # none repeated, none skipped
    metrics_a, metrics_b = _logged(a.rl_metrics), _logged(b.rl_metrics)
    assert [m["step"] for m in metrics_b] == [0, 1, 2, 3]
    for ma, mb in zip(metrics_a, metrics_b):
        assert {k: v for k, v in ma.items() if k.startswith(DETERMINISTIC)} == \
               {k: v for k, v in mb.items() if k.startswith(DETERMINISTIC)}
    assert (a.rl_policy / "model.safetensors").read_bytes() == (b.rl_policy / "model.safetensors").read_bytes()
