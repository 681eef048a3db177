"""The reward model on videos: a video's embedding is the normalised mean of a few sampled frames'
normalised embeddings, scored against the text like an image."""

import numpy as np
import pytest
import torch

from mmrlhf.models import RewardModel, build_reward_preset
from mmrlhf.models.reward import VIDEO_FRAMES
from mmrlhf.reward import RewardScorer


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return RewardScorer.from_pretrained(build_reward_preset("tiny", tmp_path_factory.mktemp("reward") / "tiny"))


def _clip(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)


def test_a_video_embeds_as_the_normalised_mean_of_its_sampled_frames(scorer):
    clip = _clip(10)
    frames = [clip[i] for i in (0, 3, 6, 9)]  # VIDEO_FRAMES = 4 spread evenly over 10 frames
    assert VIDEO_FRAMES == 4
    each = scorer.embed_images(frames)  # (4, E), each L2-normalised
    mean = each.mean(0)
    expected = mean / mean.norm()
    torch.testing.assert_close(scorer.embed_images([clip])[0], expected, atol=1e-5, rtol=0)


def test_a_video_scores_like_its_mean_embedding_through_the_head(scorer):
    clip, text = _clip(6, seed=1), "four then seven"
    model: RewardModel = scorer.model
    with torch.no_grad():
        text_emb = model.clip.encode_text(model.tokenize([text]), normalize=True)
        expected = model.score_embeddings(scorer.embed_images([clip]), text_emb)
    np.testing.assert_allclose(scorer.score([clip], [text]), expected.numpy(), atol=1e-5)


def test_images_and_videos_score_in_one_batch_as_apart(scorer):
    image, clip = _clip(1, seed=2)[0], _clip(3, seed=3)
    texts = ["four", "two then one"]
    together = scorer.score([image, clip], texts)
    apart = np.concatenate([scorer.score([image], texts[:1]), scorer.score([clip], texts[1:])])
    np.testing.assert_allclose(together, apart, atol=1e-5)
