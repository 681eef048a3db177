"""A rollout worker samples with the configured settings, else its checkpoint's generation_config,
and its behaviour log-probs are the learner's under the same settings (no Ray needed)."""

import io

import numpy as np
import torch
from PIL import Image

from mmrlhf.config import REWARD_VERSION, TOTAL
from mmrlhf.models import PromptBatch, build_policy_preset, encode_prompts, load_policy, response_logprobs
from mmrlhf.models.sampling import Sampling, resolve_sampling
from mmrlhf.rollout.worker import RolloutWorker


def _score(images, texts, references, prompts):
    return {TOTAL: np.zeros(len(texts)), REWARD_VERSION: np.zeros(len(texts), dtype=np.int64)}


def test_worker_samples_with_the_checkpoints_top_k_and_the_learner_agrees(tmp_path):
    folder = build_policy_preset("tiny", tmp_path / "policy")
    model, processor = load_policy(folder)
    model.generation_config.update(do_sample=True, top_k=7)  # as a checkpoint's generation_config.json says
    model.save_pretrained(folder)
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(png, format="PNG")
    records = [{"id": "a", "image": png.getvalue(), "prompt": "What number is written?"}]

    worker = RolloutWorker(str(folder), lambda: _score, seed=0, temperature=None, max_new_tokens=6,
                           top_p=0.9)
    assert worker.sampling == Sampling(1.0, 0.9, 7)
    rollout = worker.generate(records, samples_per_prompt=3, step=0)
    learner = resolve_sampling(model.generation_config, None, 0.9, None)  # what a learner rank resolves
    with torch.no_grad():
        logprobs, _, _ = response_logprobs(model.eval(), PromptBatch(rollout.input_ids, rollout.attention_mask,
                                                                     rollout.vision),
                                           rollout.response_ids, rollout.response_mask, **learner.kwargs())
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], rollout.logprobs[mask], atol=1e-4, rtol=0)


def test_worker_encodes_each_record_once_into_the_batch_that_encoding_every_row_gives(tmp_path):
    folder = build_policy_preset("tiny", tmp_path / "policy")
    _, processor = load_policy(folder)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(2)]
    records = []
    for i, (image, prompt) in enumerate(zip(images, ["Which digit?", "What number is written in this image, please?"])):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        records.append({"id": str(i), "image": png.getvalue(), "prompt": prompt})  # unequal lengths: padding differs

    rollout = RolloutWorker(str(folder), lambda: _score, seed=0, temperature=1.0, max_new_tokens=4).generate(
        records, samples_per_prompt=3, step=0)
    every_row = encode_prompts(processor, [image for image in images for _ in range(3)],
                               [r["prompt"] for r in records for _ in range(3)])
    assert torch.equal(rollout.input_ids, every_row.input_ids)
    assert torch.equal(rollout.attention_mask, every_row.attention_mask)
    assert rollout.vision.keys() == every_row.vision.keys()
    assert all(torch.equal(rollout.vision[k], every_row.vision[k]) for k in every_row.vision)
