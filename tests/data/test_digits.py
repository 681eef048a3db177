import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmrlhf.data.digits import (
    PROMPT,
    SPLITS,
    DigitsSpec,
    build_digits,
    digit_pools,
    digits_to_words,
    exact_match,
    gold_score,
    render_row,
    words_to_digits,
    write_digits,
)
from mmrlhf.data.media import decode_image
from mmrlhf.data.schema import RECORD_SCHEMA, read_table

SMALL = dict(n_sft=12, n_feedback=12, n_val=12, n_test=12)


@pytest.fixture(scope="module")
def tables():
    return build_digits(DigitsSpec(seed=3, **SMALL))


def test_digit_pools_are_disjoint(tables):
    pools = {split: set(pool.tolist()) for split, pool in digit_pools(DigitsSpec(seed=3)).items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not pools[a] & pools[b], f"{a} and {b} share scans"
    assert set().union(*pools.values()) == set(range(1797))
    for split, table in tables.items():
        used = {scan for ids in table["scan_ids"].to_pylist() for scan in ids}
        assert used <= pools[split], f"{split} uses scans outside its pool"


def test_same_seed_gives_identical_tables_and_another_seed_differs(tables):
    again = build_digits(DigitsSpec(seed=3, **SMALL))
    other = build_digits(DigitsSpec(seed=4, **SMALL))
    assert all(again[split].equals(tables[split]) for split in SPLITS)
    assert not other["test"].equals(tables["test"])


def test_changing_one_split_count_leaves_the_others_unchanged(tables):
    more_sft = build_digits(DigitsSpec(seed=3, **{**SMALL, "n_sft": 20}))
    assert more_sft["test"].equals(tables["test"])
    assert more_sft["sft"].slice(0, 12).equals(tables["sft"])


def test_reference_reads_the_labels_of_the_drawn_scans(tables):
    labels = load_digits().target
    for split, table in tables.items():
        assert table.num_rows == 12 and table.schema == RECORD_SCHEMA
        for row in table.to_pylist():
            digits = words_to_digits(row["reference"])
            assert 3 <= len(digits) <= 5
            assert digits == "".join(str(labels[i]) for i in row["scan_ids"])
            assert row["prompt"] == PROMPT and row["split"] == split


def test_images_are_square_uint8_canvases_that_decode(tables):
    for row in tables["feedback"].to_pylist():
        image = decode_image(row["image"], row["id"])
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert image.max() > 128  # white ink on black


def test_noise_free_unscaled_row_keeps_every_scan_whole():
    spec = DigitsSpec(scale_range=(1.0, 1.0), max_rotation_deg=0.0, noise_std=0.0, max_gap=0,
                      max_jitter=0, **SMALL)
    scans = load_digits().images[:5] / 16.0
    image = render_row(scans.astype(np.float32), spec, np.random.default_rng(0))
    # nothing cropped or blended: the canvas holds exactly the scans' ink, scaled to 0..255
    assert image.astype(int).sum() == np.rint(scans * 255).astype(int).sum()


def test_row_too_wide_for_the_canvas_is_shrunk_not_cropped():
    spec = DigitsSpec(canvas=40, scale_range=(1.6, 1.6), max_rotation_deg=0.0, noise_std=0.0,
                      max_gap=2, max_jitter=0, **SMALL)
    block = np.zeros((8, 8), np.float32)
    block[1:7, 1:7] = 1.0  # dark margin, so neighbouring digits stay separate columns
    image = render_row(np.stack([block] * 5), spec, np.random.default_rng(0))
    lit = np.flatnonzero(image.max(axis=0) > 128)  # bilinear blur lifts the margins a little
    runs = np.split(lit, np.flatnonzero(np.diff(lit) > 1) + 1)
    assert len(runs) == 5  # 13 px digits would need 65 px; all five are there, equally wide
    assert len({len(run) for run in runs}) == 1


def test_write_digits_writes_one_readable_parquet_per_split(tmp_path):
    paths = write_digits(DigitsSpec(n_sft=2, n_feedback=2, n_val=2, n_test=2), tmp_path)
    assert sorted(paths) == sorted(SPLITS)
    assert all(read_table(paths[split], RECORD_SCHEMA).num_rows == 2 for split in SPLITS)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("four one seven", 1.0),
        ("  four one   seven ", 1.0),
        ("four two seven", 2 / 3),  # one digit wrong, same length
        ("seven one four", 1 / 3),
        ("four one", 2 / 3 * math.exp(-1 / 3)),  # 0.4777: missing digit, short by 1 of 3
        ("four one seven two", math.exp(-1 / 3)),  # 0.7165: all right, one extra digit
        ("four one seven seven seven seven", math.exp(-1)),  # 0.3679
        ("", 0.0),
        ("Four one seven", 2 / 3),  # case-sensitive: "Four" is not a digit word
    ],
)
def test_gold_score_matches_hand_worked_values(response, expected):
    assert gold_score(response, "four one seven") == pytest.approx(expected)
    assert (gold_score(response, "four one seven") == 1.0) == exact_match(response,
                                                                           "four one seven")


def test_gold_score_refuses_a_reference_that_is_not_digit_words():
    with pytest.raises(ValueError, match="must be digit words"):
        gold_score("four", "a cat")


def test_digit_words_convert_both_ways():
    assert digits_to_words("417") == "four one seven"
    assert words_to_digits("four one seven") == "417"
    assert words_to_digits("four banana seven") == "4?7"
    with pytest.raises(ValueError, match="non-digit character 'a'"):
        digits_to_words("4a")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"min_digits": 6}, "min_digits/max_digits"),
        ({"pool_fractions": {"sft": 0.5, "feedback": 0.5, "val": 0.1, "test": 0.1}},
         "pool_fractions"),
        ({"canvas": 16}, "canvas"),
    ],
)
def test_spec_rejects_bad_knobs_by_name(bad, field):
    with pytest.raises(ValueError, match=f"DigitsSpec.{field}: must be"):
        DigitsSpec(**bad)
