"""ReplayBuffer: FIFO by rows, uniform draws padded to common lengths, safetensors round trip."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrlhf.learner.replay import ReplayBuffer

PADDING = {"input_ids": (9, True), "response_ids": (9, False), "response_mask": (0, False)}


def batch(first_id, rows, prompt_len, response_len):
    """Row i holds the id first_id + i in every token and in `row_id`; masks are all 1."""
    ids = torch.arange(first_id, first_id + rows)[:, None]
    return {"row_id": ids[:, 0].clone(), "input_ids": ids.repeat(1, prompt_len),
            "response_ids": ids.repeat(1, response_len), "response_mask": torch.ones(rows, response_len)}


def test_oldest_rows_leave_first_across_batch_boundaries():
    buffer = ReplayBuffer(5, PADDING)
    buffer.add(batch(0, 3, 2, 2))
    buffer.add(batch(10, 3, 4, 3))
    assert len(buffer) == 5
    held = torch.cat([chunk["row_id"] for chunk in buffer.chunks]).tolist()
    assert held == [1, 2, 10, 11, 12]
    buffer.add(batch(20, 4, 1, 1))
    assert torch.cat([chunk["row_id"] for chunk in buffer.chunks]).tolist() == [12, 20, 21, 22, 23]


def test_sample_pads_prompts_left_and_responses_right_and_keeps_rows_whole():
    buffer = ReplayBuffer(100, PADDING)
    buffer.add(batch(0, 4, 2, 1))
    buffer.add(batch(10, 4, 5, 3))
    drawn = buffer.sample(64, torch.Generator().manual_seed(0))
    assert drawn["input_ids"].shape == (64, 5) and drawn["response_ids"].shape == (64, 3)
    assert set(drawn["row_id"].tolist()) == {0, 1, 2, 3, 10, 11, 12, 13}  # uniform draws reach every row
    for row_id, prompt, response, mask in zip(drawn["row_id"], drawn["input_ids"], drawn["response_ids"],
                                               drawn["response_mask"]):
        prompt_len, response_len = (2, 1) if row_id < 10 else (5, 3)
        assert prompt.tolist() == [9] * (5 - prompt_len) + [int(row_id)] * prompt_len
        assert response.tolist() == [int(row_id)] * response_len + [9] * (3 - response_len)
        assert mask.tolist() == [1.0] * response_len + [0.0] * (3 - response_len)


def test_same_generator_state_draws_the_same_rows_after_a_safetensors_round_trip(tmp_path):
    buffer = ReplayBuffer(100, PADDING)
    buffer.add(batch(0, 3, 2, 2))
    buffer.add(batch(10, 2, 3, 1))
    save_file(buffer.state_dict(), str(tmp_path / "replay.safetensors"))
    restored = ReplayBuffer(100, PADDING)
    restored.load_state_dict(load_file(str(tmp_path / "replay.safetensors")))
    a, b = (buf.sample(16, torch.Generator().manual_seed(3)) for buf in (buffer, restored))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_use_is_a_clear_error():
    with pytest.raises(ValueError, match="capacity=0"):
        ReplayBuffer(0, PADDING)
    buffer = ReplayBuffer(4, PADDING)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1, torch.Generator())
    buffer.add(batch(0, 2, 2, 2))
    with pytest.raises(ValueError, match="keys"):
        buffer.add({"row_id": torch.zeros(2)})
    with pytest.raises(ValueError, match="row counts differ"):
        buffer.add({**batch(0, 2, 2, 2), "row_id": torch.zeros(3)})


def test_block_sampling_draws_whole_aligned_blocks_and_reaches_every_block():
    buffer = ReplayBuffer(100, PADDING)
    buffer.add(batch(0, 8, 2, 1))   # rows 0..7: blocks [0..3], [4..7]
    buffer.add(batch(10, 6, 3, 2))  # ids 10..15: blocks [10..13], [14, 15]
    drawn = buffer.sample(40, torch.Generator().manual_seed(0), block=4)["row_id"].tolist()
    assert len(drawn) == 40
    held = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]
    blocks = [held[i:i + 4] for i in range(0, len(held), 4)]  # the last block is 2 rows
    pos = 0
    seen = set()
    while pos < len(drawn):  # the draw is a sequence of whole blocks (the last one maybe cut at n)
        block = next(b for b in blocks if b[0] == drawn[pos])
        assert drawn[pos:pos + len(block)] == block[:len(drawn) - pos]
        seen.add(block[0])
        pos += len(block)
    assert seen == {b[0] for b in blocks}
    with pytest.raises(ValueError, match="block=0"):
        buffer.sample(4, torch.Generator(), block=0)


def test_block_sampling_with_block_one_is_plain_row_sampling():
    buffer = ReplayBuffer(100, PADDING)
    buffer.add(batch(0, 5, 2, 1))
    a = buffer.sample(16, torch.Generator().manual_seed(4))
    b = buffer.sample(16, torch.Generator().manual_seed(4), block=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
