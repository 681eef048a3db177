"""Reward model (open_clip CLIP + head) and RewardScorer: shapes, safetensors-only round trip, scoring."""

import glob
import pickle
import tempfile

import numpy as np
import open_clip
import pytest
import torch

from mmrlhf.models import RewardModel, build_reward_preset, register_clip_config
from mmrlhf.models.reward import clip_score
from mmrlhf.reward import RewardScorer

TEXTS = ["four one seven", "two two", ""]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_reward_preset("tiny", tmp_path_factory.mktemp("reward") / "tiny", seed=0)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(n - 1)] + [np.zeros((40, 50, 3), np.uint8)]


def _randomize_head(model, seed):
    with torch.no_grad():
        for p in model.mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))



def test_reward_forward_returns_one_score_per_pair(tiny_dir):
    model = RewardModel.from_pretrained(tiny_dir)
    pixels, tokens = model.preprocess(_images(3)), model.tokenize(TEXTS)
    assert pixels.shape == (3, 3, 64, 64) and tokens.shape == (3, 32)
    scores = model(pixels, tokens)
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_untrained_head_equals_clip_similarity_logit(tiny_dir):
    model = RewardModel.from_pretrained(tiny_dir)
    pixels, tokens = model.preprocess(_images(3)), model.tokenize(TEXTS)
    clip = model.clip
    cosine = (clip.encode_image(pixels, normalize=True) * clip.encode_text(tokens, normalize=True)).sum(-1)
    torch.testing.assert_close(model(pixels, tokens), clip.logit_scale.exp() * cosine)


def test_reward_save_load_round_trip_via_safetensors(tiny_dir, tmp_path):
    model = RewardModel.from_pretrained(tiny_dir)
    _randomize_head(model, seed=1)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = RewardModel.from_pretrained(tmp_path)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_scorer_is_deterministic_and_texts_change_scores(tiny_dir):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    images = _images(3)
    first = scorer.score(images, TEXTS)
    assert first.dtype == np.float32 and first.shape == (3,) and np.isfinite(first).all()  # "" included
    np.testing.assert_array_equal(first, scorer.score(images, TEXTS))
    same_image = [images[0]] * 3
    assert len(set(scorer.score(same_image, TEXTS).tolist())) == 3


def test_texts_of_different_lengths_score_in_one_batch_as_alone(tiny_dir):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    images = _images(3)
    texts = ["four", "four one seven two two nine eight", ""]  # padded to different lengths together
    together = scorer.score(images, texts)
    alone = np.concatenate([scorer.score([image], [text]) for image, text in zip(images, texts)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_clip_score_is_2_5_times_the_cosine_clamped_at_0():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [-1.0, 0.0], [0.6, 0.8]])
    torch.testing.assert_close(clip_score(image, text), torch.tensor([1.5, 0.0, 2.0]))  # 2.5 * (0.6, max(-1, 0), 0.8)
    torch.testing.assert_close(clip_score(image, text, w=1.0), torch.tensor([0.6, 0.0, 0.8]))


def test_scorer_clip_score_is_the_joint_embeddings_cosine_without_the_head(tiny_dir):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    _randomize_head(scorer.model, seed=3)  # the head must play no part
    images = _images(3)
    clip = scorer.model.clip
    with torch.no_grad():
        cosine = (clip.encode_image(scorer.preprocess(images), normalize=True)
                  * clip.encode_text(scorer.tokenize(TEXTS), normalize=True)).sum(-1)
    scores = scorer.clip_score(images, TEXTS)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, 2.5 * cosine.clamp(min=0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="RewardScorer.clip_score: 3 images but 2 texts"):
        scorer.clip_score(images, TEXTS[:2])


def test_split_embeddings_are_unit_length_and_the_same_in_any_batch_size(tiny_dir):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    images, texts = _images(5), [*TEXTS, "nine", "one one"]
    image_emb, text_emb = scorer.embed_images(images), scorer.embed_texts(texts)
    assert image_emb.shape == text_emb.shape == (5, scorer.embed_dim)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(scorer.embed_images(images, batch_size=2), image_emb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scorer.embed_texts(texts, batch_size=3), text_emb, rtol=1e-5, atol=1e-5)
    assert scorer.embed_images([]).shape == (0, scorer.embed_dim)
    with pytest.raises(ValueError, match="image 3: dtype is float64"):  # its index in the whole list, not the batch
        scorer.embed_images([*images[:3], np.zeros((64, 64))], batch_size=2)


def test_scorer_names_the_bad_image(tiny_dir):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="image 1: dtype is float64"):
        scorer.score([_images(2)[0], np.zeros((64, 64))], TEXTS[:2])


def test_scorer_load_weights_swaps_in_place(tiny_dir, tmp_path):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    trained = RewardModel.from_pretrained(tiny_dir)
    _randomize_head(trained, seed=2)
    trained.save_pretrained(tmp_path)
    before, model = scorer.score(_images(3), TEXTS), scorer.model
    scorer.load_weights(tmp_path)
    assert scorer.model is model
    after = scorer.score(_images(3), TEXTS)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, RewardScorer.from_pretrained(tmp_path).score(_images(3), TEXTS), rtol=1e-6)


def test_scorer_load_weights_rejects_another_architecture(tiny_dir, tmp_path):
    scorer = RewardScorer.from_pretrained(tiny_dir)
    build_reward_preset("small", tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        scorer.load_weights(tmp_path)


def test_pickle_in_the_directory_is_never_loaded(tiny_dir, tmp_path, monkeypatch, pickle_payload):
    RewardModel.from_pretrained(tiny_dir).save_pretrained(tmp_path)
    sentinel, trap = pickle_payload
    for name in ("model.pt", "pytorch_model.bin", "open_clip_model.pth"):
        (tmp_path / name).write_bytes(pickle.dumps(trap))

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    scorer = RewardScorer.from_pretrained(tmp_path)
    scorer.load_weights(tmp_path)
    assert not sentinel.exists()

    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RewardModel.from_pretrained(tmp_path)
    assert not sentinel.exists()


def test_register_clip_config_replaces_by_name_and_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = {"embed_dim": 8, "vision_cfg": {"layers": 1}, "text_cfg": {"layers": 1}}
    second = {**first, "embed_dim": 16}
    register_clip_config("mmrlhf-test-replace", first)
    register_clip_config("mmrlhf-test-other", {**first, "embed_dim": 4})
    register_clip_config("mmrlhf-test-replace", second)
    assert open_clip.get_model_config("mmrlhf-test-replace") == second
    assert open_clip.get_model_config("mmrlhf-test-other")["embed_dim"] == 4
    assert glob.glob(str(tmp_path / "mmrlhf-open-clip-*")) == []
    assert not open_clip.factory._MODEL_CONFIG_PATHS[-1].exists()  # the file open_clip read is gone
    with pytest.raises(ValueError, match="missing keys"):
        register_clip_config("mmrlhf-test-bad", {"embed_dim": 8})


@pytest.mark.parametrize("mean, std", [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                                       (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
def test_canvas_sized_images_skip_pillow_with_the_same_pixels_bit_for_bit(tiny_dir, mean, std):
    from PIL import Image

    from mmrlhf.models.policy import as_rgb_uint8
    from mmrlhf.models.reward import canvas_preprocess, canvas_transform

    model = RewardModel.from_pretrained(tiny_dir)
    rng = np.random.default_rng(3)
    canvas = [rng.integers(0, 256, (64, 64), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    transform = open_clip.image_transform(64, is_train=False, mean=mean, std=std)
    size, mean_column, std_column = canvas_transform(transform)
    reference = torch.stack([transform(Image.fromarray(as_rgb_uint8(im, i))) for i, im in enumerate(canvas)])
    assert size == 64 and torch.equal(canvas_preprocess([as_rgb_uint8(im, 0) for im in canvas], mean_column, std_column),
                                      reference)
    # through the model: canvas-sized batches take the batched path, a batch with another size the Pillow one
    pil = torch.stack([model.image_transform(Image.fromarray(as_rgb_uint8(im, i))) for i, im in enumerate(canvas)])
    assert torch.equal(model.preprocess(canvas), pil)
    mixed = model.preprocess([*canvas, np.zeros((40, 50, 3), np.uint8)])
    assert mixed.shape == (3, 3, 64, 64) and torch.equal(mixed[:2], pil)


def test_canvas_transform_refuses_a_transform_that_is_not_a_square_eval_resize():
    from mmrlhf.models.reward import canvas_transform

    assert canvas_transform(open_clip.image_transform(64, is_train=True)) is None
    assert canvas_transform(open_clip.image_transform((64, 48), is_train=False)) is None
