"""Policy: a vision-language model, with batched cached sampling and teacher-forced scoring.

LLaVA-style (Liu et al. 2023): a vision tower, a projector and a causal LM, loaded with
transformers' `AutoModelForImageTextToText`. What differs between VLM families (the chat
template, the image tensors, position ids, the trunk call) is the family adapter's
(`mmrlhf.models.families`); this module never names a family.

Prompt: one image (or one video, for families with a video path), then the prompt, through the
checkpoint's chat template with the generation prompt (the presets': "<s><image>\n{prompt}\n"),
then the response tokens, then eos. Prompts are left-padded; positions are counted over real tokens
only (the family's way), so a prompt's continuation does not depend on how much padding its batch
needed. Prompts are never cut: a prompt whose image tokens + text + `max_new_tokens` exceed the
model's positions is refused (`check_positions_fit`).

Log-probs: `generate` and `response_logprobs` both score a token with
`mmrlhf.models.sampling.token_logprobs`: log-probs in nats (float32) of the distribution actually
sampled, softmax(logits / temperature) without the family's image placeholder tokens, truncated
to top-k and to the top-p nucleus and renormalised (see that module for what PPO's ratio then
means). So PPO's behaviour log-probs (from rollout) and the learner's agree up to
floating-point noise under the same settings. Greedy decoding (`do_sample=False`) reports the
same log-probs of the argmax token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from mmrlhf.errors import CheckpointUnreachable
from mmrlhf.models.families import Family, family_for, video_model_types
from mmrlhf.models.sampling import Sampling, sample_tokens, token_logprobs


def load_policy(name_or_path: str, dtype: torch.dtype = torch.float32):
    """Load (model, processor) from a local folder or hub name with `from_pretrained`.

    Weights load from safetensors only (`use_safetensors=True`): a folder holding only a pickle
    (`pytorch_model.bin`) is refused with transformers' OSError, nothing in it is unpickled.
    The tokenizer pads on the left; a tokenizer without a pad token pads with eos. The model's
    family adapter (`mmrlhf.models.families`) is found first and kept on the processor as
    ``processor.family``, so `encode_prompts` builds the family's prompts.
    Source: transformers `AutoModelForImageTextToText`, `AutoProcessor`.

    Raises:
        CheckpointUnreachable: a hub id that cannot be downloaded (offline) nor found cached; one
            line saying how to pass a local folder instead.
        OSError: transformers' own, for other loading failures.
        ValueError: the model's family has no adapter (names its class and the supported ones).
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
    processor.family = family_for(model)
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
    """Encoded prompts, left-padded, with their images as the family adapter's row-batched tensors."""

    input_ids: torch.Tensor  # (B, T) int64, image tokens expanded, left-padded with pad id
    attention_mask: torch.Tensor  # (B, T) int64, 0 on padding
    vision: dict[str, torch.Tensor]  # {name: (B, ...)} processor outputs of the images (families.base)

    def to(self, device: torch.device | str) -> "PromptBatch":
        """The same batch on `device`."""
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           {k: v.to(device) for k, v in self.vision.items()})

    def rows(self, index: torch.Tensor) -> "PromptBatch":
        """Rows `index` ((K,) int64 or bool (B,)) of every tensor."""
        return PromptBatch(self.input_ids[index], self.attention_mask[index],
                           {k: v[index] for k, v in self.vision.items()})


def processor_family(processor) -> Family:
    """The family adapter `load_policy` kept on `processor`.

    Raises ValueError for a processor not loaded with `load_policy`.
    """
    family = getattr(processor, "family", None)
    if family is None:
        raise ValueError(f"{type(processor).__name__} has no family adapter: load it with load_policy")
    return family


def encode_prompts(processor, images: list[np.ndarray], prompts: list[str]) -> PromptBatch:
    """Encode one image (or one video) and one prompt per row with the chat template -> `PromptBatch` (B rows).

    images: uint8 (H, W) or (H, W, 3) images, grayscale repeated to RGB; or uint8 (F, H, W, 3)
    video frames (`mmrlhf.data.video.decode_media`), for families with a video path (the chat
    template's video placeholder, the processor's ``videos=``). Prompts are not cut.
    Raises ValueError naming the index of a non-uint8 image, an empty prompt or one holding the
    image/video placeholder itself (it would ask for a second one), on a length mismatch, for a
    batch that mixes images and videos, and for a video given to a family without a video path
    (naming the family and the families that take video).
    """
    if len(images) != len(prompts):
        raise ValueError(f"encode_prompts: {len(images)} images but {len(prompts)} prompts")
    family = processor_family(processor)
    video = _video_batch(family, images)
    placeholders = [getattr(processor, name, None) for name in ("image_token", "video_token")]
    placeholders = [token for token in placeholders if token] or ["<image>"]
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i}: empty")
        for token in placeholders:
            if token in prompt:
                raise ValueError(f"prompt {i}: holds a literal {token!r}; the image/video placeholder is added "
                                 f"once by the chat template, expected 1 image or video per prompt")
    rgb = images if video else [as_rgb_uint8(image, i) for i, image in enumerate(images)]
    texts = [family.chat_prompt(processor, prompt, video) for prompt in prompts]
    return PromptBatch(*family.encode(processor, rgb, texts, video))


def _video_batch(family: Family, images: list[np.ndarray]) -> bool:
    """Whether the rows are videos (uint8 (F, H, W, 3)) rather than images; ValueError for a mix,
    a badly typed clip, or clips given to a family without a video path."""
    videos = [isinstance(v, np.ndarray) and v.ndim == 4 for v in images]
    if not any(videos):
        return False
    if not all(videos):
        raise ValueError(f"encode_prompts: rows {videos.index(True)} (a video) and {videos.index(False)} (an image) "
                         "in one batch; encode images and videos in separate batches")
    if not family.takes_video:
        raise ValueError(f"prompt 0 is a video, but the {type(family).__name__} family (model_type "
                         f"{family.config.model_type!r}) has no video path; families that take video: "
                         f"{', '.join(video_model_types())}")
    for i, clip in enumerate(images):
        if clip.dtype != np.uint8 or clip.shape[3] != 3 or len(clip) == 0:
            raise ValueError(f"video {i}: {clip.dtype} {clip.shape}, expected uint8 (F>=1, H, W, 3)")
    return True


def max_positions(model) -> int:
    """The model's position limit: its text config's ``max_position_embeddings``."""
    return int(model.config.get_text_config().max_position_embeddings)


def check_positions_fit(model, batch: PromptBatch, max_new_tokens: int, record_ids: list[str], key: str) -> None:
    """Refuse rows whose image tokens + prompt tokens + ``max_new_tokens`` need more positions than
    the model has (image tokens are never cut, so such a prompt cannot be served).

    The positions a row needs are its next position (the family's: mrope ids grow more slowly
    than tokens) + ``max_new_tokens``. ``key``: the config key of ``max_new_tokens``.
    Raises ValueError naming the first such record, its counts and the limit.
    """
    family = family_for(model)
    _, next_position = family.positions(model, batch.input_ids, batch.attention_mask, batch.vision)
    need = next_position[:, 0] + max_new_tokens  # (B,)
    limit = max_positions(model)
    over = (need > limit).nonzero().flatten().tolist()
    if over:
        i = over[0]
        real = batch.attention_mask[i].bool()
        placeholders = torch.tensor(family.image_token_ids, dtype=torch.long)
        n_image = int(torch.isin(batch.input_ids[i][real], placeholders).sum())
        n_text = int(real.sum()) - n_image
        raise ValueError(f"record {record_ids[i]}: {n_image} image tokens + {n_text} prompt tokens + "
                         f"{key}={max_new_tokens} need {int(need[i])} positions, above the model's limit of "
                         f"{limit} ({len(over)} record(s) too long); lower {key} or shorten the prompt")


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
    logprobs: torch.Tensor  # (B, R) float32 nats under the sampled distribution (sampling.token_logprobs); 0 on padding
    response_mask: torch.Tensor  # (B, R) int64, 1 on real tokens including eos
    finish_reason: list[str]  # B items: "eos" or "length"
    texts: list[str]  # B decoded responses, special tokens stripped


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _row_keys(values: torch.Tensor, blocks: int = 16) -> torch.Tensor:
    """(B, blocks + 1) int64 keys of the rows of ``values`` (B, ...): each row's elements read as
    integers of their width (their bits, not their values), cut into ``blocks`` equal runs and a
    remainder, each run summed.

    Integer sums are exact (they wrap modulo 2**64 in any order), so equal rows always get equal
    keys; unequal rows can share keys (the same bits moved within a run), which
    :func:`prompt_groups` checks.
    """
    flat = values.reshape(len(values), -1).contiguous()
    bits = flat.view(_INT_OF_SIZE[flat.element_size()])  # (B, N)
    run = bits.shape[1] // blocks  # elements per run; the last N % blocks are the remainder
    cut = run * blocks
    runs = bits[:, :cut].reshape(len(bits), blocks, run).sum(dim=2, dtype=torch.int64)  # (B, blocks)
    return torch.cat([runs, bits[:, cut:].sum(dim=1, dtype=torch.int64, keepdim=True)], dim=1)


def _first_rows(inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups numbered ``inverse`` (B,) -> (first (G,): each group's smallest row, ascending;
    inverse (B,): each row's index into ``first``)."""
    order = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")  # (G,): smallest row of each group
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(len(first), device=first.device)
    return first.sort().values, rank[inverse]


def prompt_groups(batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompts of ``batch`` (rows with equal tokens, mask and image tensors are one
    prompt, as the samples of one prompt in a rollout are).

    Returns (first (G,) int64: one row of each distinct prompt, ascending; inverse (B,) int64:
    each row's index into ``first``). Exact equality: two images that differ in one pixel are two
    prompts. Rows are grouped by their tokens and exact integer keys of their image tensors
    (:func:`_row_keys`), then each row is compared element by element with its group's first row;
    only if keys collide (or a tensor holds NaN) does it fall back to sorting the full rows.
    """
    keys = torch.cat([batch.input_ids, batch.attention_mask, *(_row_keys(v) for v in batch.vision.values())], dim=1)
    first, inverse = _first_rows(torch.unique(keys, dim=0, return_inverse=True)[1])
    owner = first[inverse]  # (B,): the first row of each row's group
    if all(bool((v == v[owner]).reshape(len(v), -1).all()) for v in batch.vision.values()):
        return first, inverse
    rows = torch.cat([batch.input_ids.double(), batch.attention_mask.double(),
                      *(v.reshape(len(v), -1).double() for v in batch.vision.values())], dim=1)  # exact in float64
    return _first_rows(torch.unique(rows, dim=0, return_inverse=True)[1])


def prefill(model, batch: PromptBatch):
    """Run the prompts through the model once per distinct prompt (:func:`prompt_groups`), with
    gradients if enabled: the vision tower and the LM see each image and prompt once however many
    samples share it (a rollout's ``samples_per_prompt``), and the cache is then copied to every row.

    Returns (last (B, H): the final-norm last-layer state at each row's last prompt position, which
    predicts the first response token; cache: the model's KV cache of the B rows). Each row's
    values equal those of a forward over that row alone, up to floating-point reassociation.
    """
    family = family_for(model)
    first, inverse = prompt_groups(batch)
    rows = batch.rows(first)
    positions, _ = family.positions(model, rows.input_ids, rows.attention_mask, rows.vision)
    out = family.trunk(model, rows.input_ids, rows.attention_mask, positions, rows.vision, use_cache=True)
    cache = out.cache
    if len(first) < len(inverse):
        cache.reorder_cache(inverse)  # (G, ...) -> (B, ...) rows; index_select keeps the autograd graph
    return out.last_hidden_state[:, -1][inverse], cache


def _distribution(model, family: Family, hidden: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(..., H) last-layer hidden -> (..., V) float32 log-probs of the sampled distribution."""
    return token_logprobs(family.logits(model, hidden), sampling, family.image_token_ids)


@torch.no_grad()
def generate(model, processor, batch: PromptBatch, max_new_tokens: int, temperature: float = 1.0,
             do_sample: bool = True, generator: torch.Generator | None = None, top_p: float = 1.0,
             top_k: int = 0) -> Generation:
    """Sample up to `max_new_tokens` per row with a KV cache; greedy when `do_sample=False`.

    Sampling draws from `sampling.token_logprobs` (temperature, then top-k, then top-p) with
    `torch.multinomial(generator=...)`, so a seeded generator (on the model's device) reproduces
    the tokens. Rows stop at eos; the loop stops when all rows have, so R <= max_new_tokens.
    Dropout follows the model's train/eval mode.
    Raises ValueError for settings out of range (`sampling.Sampling`) or max_new_tokens < 1.
    """
    sampling = Sampling(temperature, top_p, top_k)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    family = family_for(model)
    tokenizer = processor.tokenizer
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    attention_mask = batch.attention_mask
    _, next_position = family.positions(model, batch.input_ids, attention_mask, batch.vision)
    last, cache = prefill(model, batch)
    finished = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool, device=batch.input_ids.device)
    tokens, logprobs, masks = [], [], []
    for step in range(max_new_tokens):
        logp = _distribution(model, family, last, sampling)  # (B, V)
        token = sample_tokens(logp, do_sample, generator)  # (B,)
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
        out = family.trunk(model, token[:, None], attention_mask, next_position, cache=cache, use_cache=True)
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


def vision_tower(model) -> torch.nn.Module:
    """The policy's image encoder (the family's: ``model.model.vision_tower``, Qwen's ``visual``...)."""
    return family_for(model).vision_tower(model)


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters of the policy's vision tower and projector."""
    return family_for(model).vision_parameters(model)


def pooled_image_features(model, vision: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, H): the mean of each row's image tokens as the language model sees them (vision tower +
    projector, the model's own ``get_image_features``). ``vision``: a `PromptBatch`'s."""
    return family_for(model).pooled_image_features(model, vision)


def response_distribution(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                          temperature: float = 1.0, top_p: float = 1.0,
                          top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token distributions over responses: one forward over [prompt ; response],
    or, when prompts repeat (a rollout's samples), :func:`prefill` and one cached forward over the responses.

    batch: (B, T) left-padded prompts; response_ids, response_mask: (B, R), right-padded.
    Returns (logp (B, R, V) float32 nats of the sampled distribution (`sampling.token_logprobs`)
    at the position that predicts each response token; hidden (B, R, H), the final-norm
    last-layer state there), with gradients. Values at padded positions are computed but
    meaningless; mask them.
    Raises ValueError for settings out of range or a batch-size mismatch.
    """
    sampling = Sampling(temperature, top_p, top_k)
    prompt_len = batch.input_ids.shape[1]
    if response_ids.shape[0] != batch.input_ids.shape[0]:
        raise ValueError(f"response_logprobs: {response_ids.shape[0]} responses for {batch.input_ids.shape[0]} prompts")
    family = family_for(model)
    input_ids = torch.cat([batch.input_ids, response_ids], dim=1)  # (B, T + R)
    attention_mask = torch.cat([batch.attention_mask, response_mask.to(batch.attention_mask.dtype)], dim=1)
    positions, _ = family.positions(model, input_ids, attention_mask, batch.vision)  # (..., B, T + R)
    if len(prompt_groups(batch)[0]) == len(response_ids):  # no prompt repeats: one forward over [prompt ; response]
        out = family.trunk(model, input_ids, attention_mask, positions, batch.vision)
        hidden = out.last_hidden_state[:, prompt_len - 1 : -1]  # (B, R, H): position t predicts token t + 1
    else:  # each distinct prompt once, then every response on its prompt's cache
        last, cache = prefill(model, batch)
        out = family.trunk(model, response_ids, attention_mask, positions[..., prompt_len:], cache=cache,
                           use_cache=True)
        hidden = torch.cat([last[:, None], out.last_hidden_state[:, :-1]], dim=1)  # (B, R, H)
    return _distribution(model, family, hidden, sampling), hidden  # (B, R, V), (B, R, H)


def response_logprobs(model, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, return_hidden: bool = False, top_p: float = 1.0, top_k: int = 0):
    """Teacher-forced scores of responses (see `response_distribution`), with gradients.

    Returns (logprobs (B, R) float32 nats of each response token under the sampled distribution,
    entropy (B, R) float32 nats of that distribution, hidden (B, R, H) or None): hidden is the
    final-norm last-layer state at the position that predicts each response token (the value head's input).
    Values at padded positions are computed but meaningless; mask them.
    Raises ValueError for settings out of range or a batch-size mismatch.
    """
    logp, hidden = response_distribution(model, batch, response_ids, response_mask, temperature, top_p, top_k)
    logprobs = logp.gather(-1, response_ids[..., None]).squeeze(-1)  # (B, R)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, R)
    return logprobs, entropy, (hidden if return_hidden else None)
