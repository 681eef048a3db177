"""The embedded video task: clips of digits one after another, encoded with PyAV, deterministic from
a seed, summaries "four then seven" and their gold score."""

import math

import numpy as np
import pytest

from mmrlhf.data.digits import SPLITS, DigitsSpec, digit_pools, gold_score, load_scans, summary_to_digits
from mmrlhf.data.digits_video import FRAMES_PER_DIGIT, PROMPT, build_clips, digits_to_summary
from mmrlhf.data.media import MediaLimits, decode_image
from mmrlhf.data.schema import RECORD_SCHEMA
from mmrlhf.data.video import decode_video

SPEC = DigitsSpec(seed=5, max_digits=3, n_sft=6, n_feedback=6, n_val=4, n_test=4)


@pytest.fixture(scope="module")
def tables():
    return build_clips(SPEC, fps=2.0)


def test_clips_are_byte_identical_for_the_same_seed_and_differ_for_another(tables):
    again = build_clips(SPEC, fps=2.0)
    assert all(tables[s].equals(again[s]) for s in SPLITS)
    other = build_clips(DigitsSpec(seed=6, max_digits=3, n_sft=6, n_feedback=6, n_val=4, n_test=4), fps=2.0)
    assert other["sft"].column("video") != tables["sft"].column("video")


def test_a_clip_shows_its_reference_digits_one_after_another_from_its_own_pool(tables):
    _, labels = load_scans()
    pools = digit_pools(SPEC)
    for split in SPLITS:
        assert tables[split].schema == RECORD_SCHEMA
        for row in tables[split].to_pylist():
            digits = "".join(str(labels[i]) for i in row["scan_ids"])
            assert row["prompt"] == PROMPT and row["reference"] == digits_to_summary(digits)
            assert 2 <= len(digits) <= 3 and set(row["scan_ids"]) <= set(pools[split].tolist())
            frames = decode_video(row["video"], row["id"], MediaLimits(video_fps=2.0, video_max_frames=16))
            assert frames.shape == (FRAMES_PER_DIGIT * len(digits), 64, 64, 3)
            first = decode_image(row["image"], row["id"])
            assert np.abs(frames[0].astype(int) - first).mean() < 4  # the image is the first frame (H.264)


def test_summaries_read_back_to_their_digits():
    assert digits_to_summary("471") == "four then seven then one"
    assert summary_to_digits("four then seven then one") == "471"
    assert summary_to_digits("four seven one") == "4?1"  # a missing "then" costs the digit after it
    assert summary_to_digits("four then seven then") == "47"


@pytest.mark.parametrize("response, expected", [
    ("four then seven then one", 1.0),
    ("four then seven", (2 / 3) * math.exp(-1 / 3)),
    ("four then two then one", 2 / 3),
    ("four seven one", 2 / 3),  # "4?1": position 2 wrong
    ("four then seven then one then one", math.exp(-1 / 3)),
    ("", 0.0),
])
def test_gold_score_of_a_clip_summary_by_hand(response, expected):
    assert gold_score(response, "four then seven then one") == pytest.approx(expected)


def test_gold_score_of_the_image_task_is_unchanged():
    assert gold_score("four one", "four one seven") == pytest.approx((2 / 3) * math.exp(-1 / 3))
    assert gold_score("four one seven", "four one seven") == 1.0
