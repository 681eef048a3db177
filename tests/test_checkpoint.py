"""Checkpoint folders: atomic commit, `latest` written last, torn saves ignored, resume checks."""

import json
import pickle
import re

import pytest
import torch

from mmrlhf.checkpoint import CheckpointDir, config_changes, read_state, truncate_log
from mmrlhf.config import RunConfig, load_config, to_dict
from mmrlhf.learner.engine import SafeTorchCheckpointEngine, decode_rng, encode_rng


def _state(step, cfg):
    return {"format": 1, "step": step, "config": to_dict(cfg)}


def _write(step, cfg):
    def write(folder):
        (folder / "weights.txt").write_text(f"weights of step {step}")
        return _state(step, cfg)
    return write


def test_latest_moves_only_when_a_save_completes(tmp_path):
    cfg, ckpts = RunConfig(), CheckpointDir(tmp_path, keep=2)
    assert ckpts.latest() is None
    ckpts.save(1, _write(1, cfg))
    assert ckpts.latest() == tmp_path / "step_1"

    def dies_halfway(folder):
        (folder / "weights.txt").write_text("half")
        raise KeyboardInterrupt("killed during the save")

    with pytest.raises(KeyboardInterrupt):
        ckpts.save(2, dies_halfway)
    assert ckpts.latest() == tmp_path / "step_1"  # the torn step 2 is never resumed
    assert (tmp_path / ".step_2.partial").exists() and not (tmp_path / "step_2").exists()

    # A process killed after the rename but before `latest` moved leaves a step folder that
    # `latest` does not name: it is ignored, then replaced by the next save of that step.
    (tmp_path / "step_2").mkdir()
    assert ckpts.latest() == tmp_path / "step_1"
    ckpts.save(2, _write(2, cfg))
    assert (tmp_path / "step_2" / "weights.txt").read_text() == "weights of step 2"
    assert ckpts.latest() == tmp_path / "step_2" and not (tmp_path / ".step_2.partial").exists()

    (tmp_path / "step_9").mkdir()  # from a timeline abandoned by a resume from an earlier step
    ckpts.save(3, _write(3, cfg))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_2", "step_3"]  # keep=2


def test_latest_naming_a_folder_without_state_is_reported(tmp_path):
    (tmp_path / "step_4").mkdir()
    (tmp_path / "latest").write_text("step_4")
    with pytest.raises(FileNotFoundError, match="step_4, which has no state.json"):
        CheckpointDir(tmp_path).latest()


def test_resume_refuses_a_config_that_changes_the_run(tmp_path):
    saved = load_config(None, ["rl.steps=2"])
    CheckpointDir(tmp_path).save(2, _write(2, saved))
    more_steps = load_config(None, ["rl.steps=4", "rl.checkpoint_every=1", "resources.learner_cpus=2"])
    assert read_state(tmp_path / "step_2", more_steps)["step"] == 2
    other = load_config(None, ["rl.steps=4", "rl.lr=1e-3", "seed=3"])
    with pytest.raises(ValueError, match=re.escape(f"rl.lr: checkpoint {saved.rl.lr}, now 0.001; seed: checkpoint 0, now 3")):
        read_state(tmp_path / "step_2", other)
    assert config_changes({"rl": {"steps": 2}}, {"rl": {"steps": 4}}) == []


def test_truncate_log_keeps_the_steps_before_the_resume_point(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "x": s * 1.5}) + "\n" for s in range(5)))
    truncate_log(log, 3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]
    truncate_log(log, 0)
    assert not log.exists()



def test_deepspeed_file_with_a_pickled_payload_is_refused(tmp_path, pickle_payload):
    sentinel, trap = pickle_payload
    payload = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    payload.write_bytes(pickle.dumps({"optimizer_state_dict": trap}))
    with pytest.raises(ValueError, match="optim_states.pt: refused"):
        SafeTorchCheckpointEngine().load(str(payload))
    assert not sentinel.exists()
    plain = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "step": 3}, plain)
    assert SafeTorchCheckpointEngine().load(str(plain))["step"] == 3


def test_rng_state_round_trips_through_text():
    generator = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=generator)
    state = generator.get_state()
    restored = torch.Generator()
    restored.set_state(decode_rng(json.loads(json.dumps(encode_rng(state)))))
    assert torch.equal(torch.randperm(10, generator=restored), torch.randperm(10, generator=generator))
