import numpy as np
import pytest
import torch
from PIL import Image

from mmrlhf.agents.frames import downsample, save_strip
from mmrlhf.agents.preferences import PairSet, select_queries, simulated_labels
from mmrlhf.agents.reward_model import FrameRewardEnsemble, random_shift, train_ensemble


def test_downsample_is_the_box_average_of_grey():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = 255  # one white quadrant
    assert downsample(frame, 2).tolist() == [[255, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        downsample(np.zeros((4, 4), np.uint8), 2)


def test_strip_png_holds_every_kth_frame_side_by_side(tmp_path):
    clip = np.stack([np.full((3, 5), i * 10, np.uint8) for i in range(6)])  # (L=6, H=3, W=5)
    path = save_strip(clip, tmp_path / "clip.png", every=2)
    strip = np.array(Image.open(path))
    assert strip.shape == (3, 15)
    assert strip[0, ::5].tolist() == [0, 20, 40]


def test_ensemble_save_load_gives_the_same_rewards(tmp_path):
    ensemble = FrameRewardEnsemble(members=3, size=32, seed=3)
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    ensemble.save(tmp_path)
    np.testing.assert_array_equal(FrameRewardEnsemble.load(tmp_path).rewards(frames), ensemble.rewards(frames))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrameRewardEnsemble.load(tmp_path / "missing")


def test_stacked_ensemble_takes_c_frames_per_input_and_keeps_them_through_save_load(tmp_path):
    ensemble = FrameRewardEnsemble(members=2, size=32, seed=1, channels=2)
    stacks = np.random.default_rng(0).integers(0, 256, (5, 2, 32, 32), dtype=np.uint8)  # (N, C, S, S)
    assert ensemble.input_shape == (2, 32, 32) and ensemble.rewards(stacks).shape == (5,)
    np.testing.assert_array_equal(FrameRewardEnsemble.load(ensemble.save(tmp_path)).rewards(stacks),
                                  ensemble.rewards(stacks))
    with pytest.raises(ValueError, match=r"uint8 \(N, 2, 32, 32\), got uint8 \(5, 32, 32\)"):
        ensemble.rewards(stacks[:, 0])  # single frames given to a 2-frame model
    with pytest.raises(ValueError, match=r"\(P, L, 2, 32, 32\)"):
        train_ensemble(ensemble, stacks[None, :, 0], stacks[None, :, 0], np.ones(1, np.float32))


def test_stacked_ensemble_learns_motion_that_one_frame_cannot_show():
    # The annotator prefers still clips; every input has the same frames, only their order moves.
    a, b = np.zeros((32, 32), np.uint8), np.full((32, 32), 255, np.uint8)
    def clip(moving):  # (L=4, C=2, 32, 32): moving inputs alternate a->b, b->a; still ones a->a, b->b
        return np.stack([np.stack([x, y if t < moving else x]) for t, (x, y) in enumerate([(a, b), (b, a)] * 2)])
    counts = np.array([(i, j) for i in range(5) for j in range(5) if i != j] * 3)
    c1, c2 = np.stack([clip(i) for i, _ in counts]), np.stack([clip(j) for _, j in counts])
    mu = (counts[:, 0] < counts[:, 1]).astype(np.float32)  # fewer moving steps is better
    ensemble = FrameRewardEnsemble(members=3, size=32, seed=0, channels=2)
    metrics = train_ensemble(ensemble, c1, c2, mu, steps=80, batch_pairs=16, lr=3e-3)
    assert metrics["reward/train_accuracy"] == 1.0
    still, moving = ensemble.rewards(np.stack([np.stack([a, a]), np.stack([a, b])]))
    assert still > moving


def test_trained_ensemble_prefers_brighter_clips_as_the_labels_say():
    # The annotator prefers the clip with more bright frames; training must learn that order.
    rng = np.random.default_rng(0)
    def clip(bright):  # (L=4, 32, 32): `bright` white frames, the rest black
        return np.stack([np.full((32, 32), 255 if t < bright else 0, np.uint8) for t in range(4)])
    counts = rng.integers(0, 5, (60, 2))
    counts = counts[counts[:, 0] != counts[:, 1]]
    c1, c2 = np.stack([clip(a) for a, _ in counts]), np.stack([clip(b) for _, b in counts])
    mu = (counts[:, 0] > counts[:, 1]).astype(np.float32)
    ensemble = FrameRewardEnsemble(members=3, size=32, seed=0)
    metrics = train_ensemble(ensemble, c1, c2, mu, steps=60, batch_pairs=16, lr=3e-3)
    assert metrics["reward/train_accuracy"] == 1.0
    white, black = ensemble.rewards(np.stack([clip(4)[0], clip(0)[0]]))
    assert white > black


def test_simulated_labels_follow_true_returns_ties_and_noise():
    rng = np.random.default_rng(0)
    r1, r2 = np.array([3.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0])
    assert simulated_labels(r1, r2, 0.0, rng).tolist() == [1.0, 0.0, 0.5]
    noisy = simulated_labels(np.ones(2000), np.zeros(2000), 0.1, rng)
    assert set(np.unique(noisy)) <= {0.0, 1.0}
    assert 0.03 < (noisy == 0).mean() < 0.08  # 10% coin flips: half of them land on the wrong side
    with pytest.raises(ValueError, match="noise=1.5"):
        simulated_labels(r1, r2, 1.5, rng)


def test_selected_queries_are_distinct_clips_of_the_pool():
    rng = np.random.default_rng(0)
    clips = [(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8), np.ones(3, np.float32)) for _ in range(5)]
    queries = select_queries(FrameRewardEnsemble(members=3, size=32), clips, 4, 20, rng)
    assert queries.shape == (4, 2) and (queries[:, 0] != queries[:, 1]).all() and queries.max() < 5
    pairs = PairSet()
    pairs.add(clips, queries, np.ones(4, np.float32))
    c1, c2, mu = pairs.arrays()
    assert c1.shape == c2.shape == (4, 3, 32, 32) and pairs.returns_1 == [3.0] * 4
    with pytest.raises(ValueError, match="need >= 2 clips"):
        select_queries(FrameRewardEnsemble(members=3, size=32), clips[:1], 1, 5, rng)


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (4, 3, 2, 8, 8)])  # (N, L, S, S) and stacks (N, L, C, S, S)
def test_random_shift_moves_every_frame_of_a_clip_by_one_offset_of_the_edge_padded_clip(shape):
    clips = torch.randint(0, 256, shape, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(clips, 2, generator)
    assert shifted.shape == clips.shape and shifted.dtype == torch.uint8
    offsets = set()
    for clip, out in zip(clips.numpy(), shifted.numpy()):  # slow reference: try every offset
        pad = [(0, 0)] * (clip.ndim - 2) + [(2, 2), (2, 2)]
        padded = np.pad(clip, pad, mode="edge")
        matches = [(y, x) for y in range(5) for x in range(5) if np.array_equal(padded[..., y:y + 8, x:x + 8], out)]
        assert matches, "no single offset of the padded clip gives the shifted clip"
        offsets.add(matches[0])
    assert len(offsets) > 1  # clips get different offsets
    assert torch.equal(random_shift(clips, 0, generator), clips)
