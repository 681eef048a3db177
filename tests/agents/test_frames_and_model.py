import numpy as np
import pytest
from PIL import Image

from mmrlhf.agents.frames import downsample, save_strip
from mmrlhf.agents.preferences import PairSet, select_queries, simulated_labels
from mmrlhf.agents.reward_model import FrameRewardEnsemble, train_ensemble


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
