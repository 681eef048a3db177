"""Policy: a LLaVA-style vision-language model, with batched sampling and teacher-forced scoring.

LLaVA (Liu et al. 2023): a vision tower, a projector and a causal LM; here transformers'
`AutoModelForImageTextToText` (`FastVlmForConditionalGeneration` with a ResNet tower for the
presets, `LlavaForConditionalGeneration` for `llava-hf/*` checkpoints). Other families work
if their forward takes `input_ids`, `pixel_values`, `attention_mask`, `position_ids`, `cache`
and they expose `.model` (the trunk, with `.vision_tower`) and output embeddings (the LM head).

Prompt format (`PROMPT_FORMAT`): "<image>\n{prompt}\n", then the response tokens, then eos.
Prompts are left-padded; positions are counted over real tokens only, so a prompt's
continuation does not depend on how much padding its batch needed.

Log-probs: `generate` and `response_logprobs` both score a token with
log_softmax(logits / temperature) in float32, in nats, so PPO's behaviour log-probs (from
rollout) and the learner's log-probs agree up to floating-point noise at the same temperature.
Greedy decoding (`do_sample=False`) reports the same tempered log-probs of the argmax token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from mmrlhf.errors import CheckpointUnreachable

PROMPT_FORMAT = "<image>\n{prompt}\n"


def load_policy(name_or_path: str, dtype: torch.dtype = torch.float32):
    """Load (model, processor) from a local folder or hub name with `from_pretrained`.

    Weights load from safetensors only (`use_safetensors=True`): a folder holding only a pickle
    (`pytorch_model.bin`) is refused with transformers' OSError, nothing in it is unpickled.
    The tokenizer pads on the left; a tokenizer without a pad token pads with eos.
    Source: transformers `AutoModelForImageTextToText`, `AutoProcessor`.

    Raises:
        CheckpointUnreachable: a hub id that cannot be downloaded (offline) nor found cached; one
            line saying how to pass a local folder instead.
        OSError: transformers' own, for other loading failures.
    """
    try:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(name_or_path)
    except OSError as err:
        if Path(name_or_path).exists() or "connect" not in str(err):
            raise
        raise CheckpointUnreachable(
            f"policy {name_or_path!r} could not be reached (no network to huggingface.co, and not in the local "
            f"cache): download it where there is network (`hf download {name_or_path} --local-dir DIR`) and pass "
            "the folder, e.g. model.policy=/abs/DIR or --policy /abs/DIR") from err
    _pad_left(processor.tokenizer)
    return model, processor


def _pad_left(tokenizer) -> None:
    """Pad on the left, with eos where the tokenizer has no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def pad_token_id(name_or_path: str) -> int:
    """The pad token id :func:`load_policy`'s processor pads with, from the tokenizer alone (no
    weights are read). Raises OSError (transformers') when there is no tokenizer at ``name_or_path``."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    _pad_left(tokenizer)
    return tokenizer.pad_token_id


def as_rgb_uint8(image: np.ndarray, index: int) -> np.ndarray:
    """(H, W) grayscale or (H, W, 3) RGB uint8 -> (H, W, 3) RGB uint8.

    Raises ValueError naming `index` (the image's place in its batch) for another dtype or shape.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: dtype is {image.dtype}, expected uint8")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"image {index}: shape is {image.shape}, expected (H, W) or (H, W, 3)")


@dataclass
class PromptBatch:
    """Encoded prompts, left-padded."""

    input_ids: torch.Tensor  # (B, T) int64, image tokens expanded, left-padded with pad id
    attention_mask: torch.Tensor  # (B, T) int64, 0 on padding
    pixel_values: torch.Tensor  # (B, 3, H, W) float, normalised by the image processor

    def to(self, device: torch.device | str) -> "PromptBatch":
        """The same batch on `device`."""
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), self.pixel_values.to(device))


def encode_prompts(processor, images: list[np.ndarray], prompts: list[str]) -> PromptBatch:
    """Encode one image and one prompt per row with `PROMPT_FORMAT` -> `PromptBatch` (B rows).

    images: uint8 (H, W) or (H, W, 3); grayscale is repeated to RGB.
    Raises ValueError naming the index of a non-uint8 image, an empty prompt or one holding the
    image placeholder itself (it would ask for a second image), or on a length mismatch.
    """
    if len(images) != len(prompts):
        raise ValueError(f"encode_prompts: {len(images)} images but {len(prompts)} prompts")
    image_token = getattr(processor, "image_token", "<image>")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i}: empty")
        if image_token in prompt:
            raise ValueError(f"prompt {i}: holds a literal {image_token!r}; the image placeholder is added "
                             f"once by PROMPT_FORMAT, expected 1 image per prompt")
    rgb = [as_rgb_uint8(image, i) for i, image in enumerate(images)]
    texts = [PROMPT_FORMAT.format(prompt=prompt) for prompt in prompts]
    enc = processor(images=rgb, text=texts, return_tensors="pt", padding=True)
    return PromptBatch(enc["input_ids"], enc["attention_mask"], enc["pixel_values"])


def encode_responses(processor, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference responses as policy tokens: each text + eos, cut to `max_len`, right-padded.

    Returns (response_ids (B, R) int64 padded with pad id, response_mask (B, R) int64), R = longest
    row after the cut (<= max_len). A cut row loses its eos. SFT is
    `-masked_mean(response_logprobs(...)[0], response_mask)`.
    """
    tokenizer = processor.tokenizer
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    rows = [row[:max_len] for row in rows]
    width = max(len(row) for row in rows)
    response_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        response_ids[i, : len(row)] = torch.tensor(row)
        response_mask[i, : len(row)] = 1
    return response_ids, response_mask


@dataclass
class Generation:
    """Sampled responses, right-padded."""

    response_ids: torch.Tensor  # (B, R) int64, pad id after eos
    logprobs: torch.Tensor  # (B, R) float32 nats, log_softmax(logits / temperature) of each token; 0 on padding
    response_mask: torch.Tensor  # (B, R) int64, 1 on real tokens including eos
    finish_reason: list[str]  # B items: "eos" or "length"
    texts: list[str]  # B decoded responses, special tokens stripped


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counted over real tokens; padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_groups(batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompts of ``batch`` (rows with equal tokens, mask and pixels are one prompt,
    as the samples of one prompt in a rollout are).

    Returns (first (G,) int64: one row of each distinct prompt, ascending; inverse (B,) int64:
    each row's index into ``first``). Exact equality, no hashing: two images that differ in one
    pixel are two prompts.
    """
    rows = torch.cat([batch.input_ids.double(), batch.attention_mask.double(),
                      batch.pixel_values.flatten(1).double()], dim=1)  # (B, 2T + 3HW), exact in float64
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    order = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")  # (G,): smallest row of each prompt
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(len(first), device=first.device)
    return first.sort().values, rank[inverse]


def prefill(model, batch: PromptBatch):
    """Run the prompts through the model once per distinct prompt (:func:`prompt_groups`), with
    gradients if enabled: the vision tower and the LM see each image and prompt once however many
    samples share it (a rollout's ``samples_per_prompt``), and the cache is then copied to every row.

    Returns (last (B, H): the final-norm last-layer state at each row's last prompt position, which
    predicts the first response token; cache: the model's KV cache of the B rows). Each row's
    values equal those of a forward over that row alone, up to floating-point reassociation.
    """
    first, inverse = prompt_groups(batch)
    mask = batch.attention_mask[first]
    out = model.model(input_ids=batch.input_ids[first], pixel_values=batch.pixel_values[first], attention_mask=mask,
                      position_ids=_position_ids(mask), use_cache=True)
    cache = out.cache
    if len(first) < len(inverse):
        cache.reorder_cache(inverse)  # (G, ...) -> (B, ...) rows; index_select keeps the autograd graph
    return out.last_hidden_state[:, -1][inverse], cache


def _tempered_logprobs(model, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., H) last-layer hidden -> (..., V) float32 log_softmax(lm_head(hidden) / temperature).

    The image placeholder token (``config.image_token_id``) gets probability 0 (log-prob: the
    lowest finite float, so entropies stay finite): it stands for image features, and a sampled
    one would make the next forward fail with "Image features and image tokens do not match".
    """
    logits = model.get_output_embeddings()(hidden).float() / temperature
    image_token = getattr(model.config, "image_token_id", None)
    if image_token is not None:
        index = torch.tensor([image_token], device=logits.device)
        logits = logits.index_fill(-1, index, torch.finfo(logits.dtype).min)
    return F.log_softmax(logits, dim=-1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@torch.no_grad()
def generate(model, processor, batch: PromptBatch, max_new_tokens: int, temperature: float = 1.0,
             do_sample: bool = True, generator: torch.Generator | None = None) -> Generation:
    """Sample up to `max_new_tokens` per row with a KV cache; greedy when `do_sample=False`.

    Sampling draws from softmax(logits / temperature) with `torch.multinomial(generator=...)`,
    so a seeded generator (on the model's device) reproduces the tokens. Rows stop at eos; the loop stops when all
    rows have, so R <= max_new_tokens. Dropout follows the model's train/eval mode.
    Raises ValueError for temperature <= 0 or max_new_tokens < 1.
    """
    _check_temperature(temperature)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokenizer = processor.tokenizer
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    attention_mask = batch.attention_mask
    last, cache = prefill(model, batch)
    next_position = _position_ids(attention_mask)[:, -1:] + 1  # (B, 1)
    finished = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool, device=batch.input_ids.device)
    tokens, logprobs, masks = [], [], []
    for step in range(max_new_tokens):
        logp = _tempered_logprobs(model, last, temperature)  # (B, V)
        if do_sample:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # (B,)
        else:
            token = logp.argmax(-1)
        alive = ~finished
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        tokens.append(token)
        logprobs.append(torch.where(alive, logp.gather(-1, token[:, None]).squeeze(-1), 0.0))
        masks.append(alive.long())
        finished = finished | (token == eos_id)
        if finished.all() or step == max_new_tokens - 1:
            break
        # the cache sees exactly [prompt ; response] under mask prompt ++ response_mask, as in response_logprobs
        attention_mask = torch.cat([attention_mask, alive.long()[:, None]], dim=1)
        out = model.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                          cache=cache, use_cache=True)
        last, cache = out.last_hidden_state[:, -1], out.cache
        next_position = next_position + 1
    response_ids = torch.stack(tokens, 1)  # (B, R)
    response_mask = torch.stack(masks, 1)  # (B, R)
    texts = [tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
             for ids, mask in zip(response_ids, response_mask)]
    return Generation(
        response_ids=response_ids,
        logprobs=torch.stack(logprobs, 1),
        response_mask=response_mask,
        finish_reason=["eos" if done else "length" for done in finished.tolist()],
        texts=texts,
    )


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image tokens the language model sees: vision tower + projector, ``(B, P, H)``.

    ``pixel_values``: ``(B, 3, H_img, W_img)`` from the processor. Uses the model's own
    ``get_image_features`` (transformers), so the feature layer and selection strategy of the
    checkpoint apply.
    """
    features = model.model.get_image_features(pixel_values=pixel_values)
    features = getattr(features, "pooler_output", features)
    return torch.stack(list(features)) if isinstance(features, (list, tuple)) else features


def response_distribution(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                          temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token distributions over responses: one forward over [prompt ; response].

    batch: (B, T) left-padded prompts; response_ids, response_mask: (B, R), right-padded.
    Returns (logp (B, R, V) float32 nats, log_softmax(logits / temperature) at the position that
    predicts each response token; hidden (B, R, H), the final-norm last-layer state there), with
    gradients. Values at padded positions are computed but meaningless; mask them.
    Raises ValueError for temperature <= 0 or a batch-size mismatch.
    """
    _check_temperature(temperature)
    prompt_len = batch.input_ids.shape[1]
    if response_ids.shape[0] != batch.input_ids.shape[0]:
        raise ValueError(f"response_logprobs: {response_ids.shape[0]} responses for {batch.input_ids.shape[0]} prompts")
    attention_mask = torch.cat([batch.attention_mask, response_mask.to(batch.attention_mask.dtype)], dim=1)
    positions = _position_ids(attention_mask)  # (B, T + R)
    if len(prompt_groups(batch)[0]) == len(response_ids):  # no prompt repeats: one forward over [prompt ; response]
        out = model.model(input_ids=torch.cat([batch.input_ids, response_ids], dim=1), pixel_values=batch.pixel_values,
                          attention_mask=attention_mask, position_ids=positions, use_cache=False)
        hidden = out.last_hidden_state[:, prompt_len - 1 : -1]  # (B, R, H): position t predicts token t + 1
    else:  # each distinct prompt once, then every response on its prompt's cache
        last, cache = prefill(model, batch)
        out = model.model(input_ids=response_ids, attention_mask=attention_mask, position_ids=positions[:, prompt_len:],
                          cache=cache, use_cache=True)
        hidden = torch.cat([last[:, None], out.last_hidden_state[:, :-1]], dim=1)  # (B, R, H)
    return _tempered_logprobs(model, hidden, temperature), hidden  # (B, R, V), (B, R, H)


def response_logprobs(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, return_hidden: bool = False):
    """Teacher-forced scores of responses (see `response_distribution`), with gradients.

    Returns (logprobs (B, R) float32 nats of each response token under log_softmax(logits / temperature),
    entropy (B, R) float32 nats of that tempered distribution, hidden (B, R, H) or None): hidden is the
    final-norm last-layer state at the position that predicts each response token (the value head's input).
    Values at padded positions are computed but meaningless; mask them.
    Raises ValueError for temperature <= 0 or a batch-size mismatch.
    """
    logp, hidden = response_distribution(model, batch, response_ids, response_mask, temperature)
    logprobs = logp.gather(-1, response_ids[..., None]).squeeze(-1)  # (B, R)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, R)
    return logprobs, entropy, (hidden if return_hidden else None)
