"""Presets: tokenizer, param budgets and name resolution (built once, atomically, then reused)."""

import pytest

from mmrlhf.models import REWARD_PRESETS, RewardModel, resolve_policy, resolve_reward, train_tokenizer
from mmrlhf.models.presets import build_policy_preset
from mmrlhf.models.tokenizer import DIGIT_WORDS, SPECIAL_TOKENS


def test_tokenizer_has_fixed_special_ids_and_whole_digit_words(tmp_path):
    tok = train_tokenizer(out_dir=tmp_path)
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.image_token_id) == (0, 1, 2, 4)
    ids = tok("Four ONE seven", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and tok.unk_token_id not in ids
    assert tok.decode(tok(" ".join(DIGIT_WORDS))["input_ids"], skip_special_tokens=True) == " ".join(DIGIT_WORDS)
    assert tok("<image><image>\nwhat")["input_ids"] == [1, 4, 4, tok.convert_tokens_to_ids("what")]
    assert (tmp_path / "tokenizer.json").is_file()


def test_reward_tiny_under_1m_params_and_small_between_1m_and_10m(tmp_path):
    for name, low, high in [("tiny", 0, 1_000_000), ("small", 1_000_000, 10_000_000)]:
        model = RewardModel.from_pretrained(resolve_reward(name, tmp_path))
        assert low < sum(p.numel() for p in model.parameters()) < high, name
    assert set(REWARD_PRESETS) == {"tiny", "small"}


def test_resolve_builds_a_preset_once_and_passes_other_names_through(tmp_path, monkeypatch):
    path = resolve_policy("tiny", tmp_path)
    assert path == str(tmp_path / "policy-tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["policy-tiny"]  # no temporary folder left behind

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr("mmrlhf.models.presets.build_policy_preset", fail)
    assert resolve_policy("tiny", tmp_path) == path
    hub_name = "llava-hf/llava-interleave-qwen-0.5b-hf"
    assert resolve_policy(hub_name, tmp_path) == hub_name
    assert resolve_policy(str(tmp_path / "elsewhere"), tmp_path) == str(tmp_path / "elsewhere")


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    def broken(name, out_dir):
        (out_dir / "half-written").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr("mmrlhf.models.presets.build_policy_preset", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_policy("tiny", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_preset_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown policy preset 'huge'; choose one of \['small', 'tiny'\]"):
        build_policy_preset("huge", tmp_path)
