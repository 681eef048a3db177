"""The records that flow between the parts of a run, one field a line, each with its shape.

Shape legend (../CONVENTIONS.md): ``B`` batch, ``T`` prompt tokens (left-padded), ``R``
response tokens (right-padded), ``H``/``W`` image pixels. Images travel as ``vision``: the policy
family adapter's row-batched processor outputs (``{name: (B, ...)}``, see
``mmrlhf.models.families``), carried unchanged from the rollout worker to the learner.
Log-probs are in nats. This module imports no Ray, DeepSpeed or ``torch.distributed`` (a test
checks it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor


def pad_cat(tensors: list[Tensor], value: float, left: bool) -> Tensor:
    """Concatenate ``(b_i, L_i, ...)`` tensors along dim 0, padding dim 1 to the longest with
    ``value``, on the left (prompts) or the right (responses)."""
    length = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        pad = length - t.shape[1]
        filler = torch.full((t.shape[0], pad, *t.shape[2:]), value, dtype=t.dtype)
        out.append(torch.cat([filler, t] if left else [t, filler], dim=1))
    return torch.cat(out, dim=0)


def cat_rows(tensors: list[Tensor], value: float = 0) -> Tensor:
    """Concatenate ``(b_i, ...)`` tensors along dim 0, padding every other dim to the largest at
    its end with ``value``: how row-batched image tensors of different sizes join (a family
    adapter reads each row's real extent from its own fields, e.g. ``image_grid_thw``)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = []
    for t in tensors:
        pad = [p for d in reversed(range(1, t.dim())) for p in (0, shape[d - 1] - t.shape[d])]
        out.append(torch.nn.functional.pad(t, pad, value=value) if any(pad) else t)
    return torch.cat(out, dim=0)


VISION_PREFIX = "vision."  # the learner's flat batch holds a PromptBatch's `vision` under these keys


def flat_vision(vision: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{name: (B, ...)}`` -> ``{"vision.<name>": (B, ...)}``, for a flat batch of tensors."""
    return {VISION_PREFIX + k: v for k, v in vision.items()}


def vision_of(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``vision`` dict of a flat batch (the inverse of :func:`flat_vision`)."""
    return {k[len(VISION_PREFIX):]: v for k, v in batch.items() if k.startswith(VISION_PREFIX)}


def tensor_bytes(tensor: Tensor) -> tuple[str, tuple[int, ...], np.ndarray]:
    """(torch dtype name, shape, raw bytes as a 1-D uint8 numpy array) of ``tensor``, moved to the
    CPU and made contiguous only where it isn't (then the bytes alias it).

    Ray pickles numpy arrays out of band (pickle protocol 5): one copy into the object store, and
    a reader maps them back without a copy (Ray docs, "Serialization"), where a tensor's own
    pickling goes through ``torch.save`` bytes, copied on both sides. Any dtype travels, bfloat16
    included, since only the bytes do.
    """
    tensor = tensor.detach().cpu().contiguous()
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), tensor.reshape(-1).view(torch.uint8).numpy()


def tensor_from_bytes(dtype: str, shape: tuple[int, ...], raw: np.ndarray) -> Tensor:
    """The tensor of :func:`tensor_bytes`' triple, a view of ``raw`` (no copy). ``raw`` read from
    the object store is read-only shared memory: clone the result to write to it."""
    with warnings.catch_warnings():
        # Arrays mapped from the object store are flagged read-only; torch warns that it cannot flag tensors so.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape)


class ReadOnlyStateDict(Mapping[str, Tensor]):
    """A state dict {name: Tensor} over views the subclass keeps in ``self._tensors`` (views of
    shared memory: ``sync.SharedStateDict``, ``weight_slots.SlotStateDict``); not to be written."""

    _tensors: dict[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


class _Packed(NamedTuple):
    """A tensor in a pickled :class:`Rollout`: :func:`tensor_bytes`' triple."""

    dtype: str
    shape: tuple[int, ...]
    raw: np.ndarray


def _pack(value):
    """Tensors (also inside dicts) as :class:`_Packed`, anything else as it is."""
    if isinstance(value, Tensor):
        return _Packed(*tensor_bytes(value))
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    return value


def _unpack(value):
    """:func:`_pack` undone; each tensor a copy that owns its memory (not the object store's)."""
    if isinstance(value, _Packed):
        return tensor_from_bytes(*value).clone()
    if isinstance(value, dict):
        return {k: _unpack(v) for k, v in value.items()}
    return value


def _shared_image_rows(prompt_ids: list[str], vision: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
    """(first (G,): the first row of each prompt id, inverse (B,): each row's index into it) when
    every ``vision`` tensor is equal, element for element, across the rows of each prompt id (a
    rollout's samples of one prompt); None when some are not (or hold NaN)."""
    groups: dict[str, int] = {}  # prompt id -> its first row
    for row, prompt_id in enumerate(prompt_ids):
        groups.setdefault(prompt_id, row)
    owner = torch.tensor([groups[i] for i in prompt_ids], dtype=torch.int64)  # (B,): each row's first row
    first = torch.tensor(list(groups.values()), dtype=torch.int64)  # ascending: ids in order of first row
    inverse = torch.searchsorted(first, owner)
    return (first, inverse) if all(bool((v == v[owner]).all()) for v in vision.values()) else None


def _rollout_from_wire(state: dict, image_rows: Tensor | None) -> "Rollout":
    """A pickled :class:`Rollout` back (see ``Rollout.__reduce__``)."""
    state = _unpack(state)
    if image_rows is not None:
        state["vision"] = {k: v[image_rows] for k, v in state["vision"].items()}
    return Rollout(**state)


def prompt_index(prompt_ids: list[str]) -> Tensor:
    """(B,) int64 group index of each row: rows answering the same prompt share one (sorted ids)."""
    _, index = np.unique(np.asarray(prompt_ids), return_inverse=True)
    return torch.from_numpy(index.reshape(-1).astype(np.int64))


@dataclass
class Rollout:
    """Samples generated by rollout workers for a batch of prompts, scored by the reward model.

    One row per (prompt, sample). ``policy_version`` is the version of the weights that
    generated each row; ``scores`` is filled by the reward sources (``None`` until then): the
    weighted sum of ``source_scores`` (:mod:`mmrlhf.reward.sources`). ``timings`` holds the
    seconds of each phase of the call that made the rollout (``time/generate``, ``time/score``).
    ``reward_version`` is the version of the reward deployment's weights (its user_config) that
    scored each row, so a reward-model swap during RL is visible row by row.
    """

    prompt_ids: list[str]             # (B,) record id of the prompt
    sample_index: list[int]           # (B,) which of the prompt's samples this row is
    input_ids: Tensor                 # (B, T) prompt tokens, left-padded
    attention_mask: Tensor            # (B, T) 1 on real prompt tokens
    vision: dict[str, Tensor]         # {name: (B, ...)} the images' processor outputs, row-batched
    response_ids: Tensor              # (B, R) sampled tokens, right-padded
    response_mask: Tensor             # (B, R) 1 on real response tokens (eos included)
    logprobs: Tensor                  # (B, R) behaviour log-probs of the sampled tokens
    finish_reason: list[str]          # (B,) "eos" or "length"
    texts: list[str]                  # (B,) decoded responses
    policy_version: Tensor            # (B,) int64, weights version that generated the row
    scores: Optional[Tensor] = None   # (B,) total reward of the sources; NaN marks an unscored row
    source_scores: dict[str, Tensor] = field(default_factory=dict)  # {source label: (B,)} NaN: unscored
    timings: dict[str, float] = field(default_factory=dict)         # {"time/<phase>": seconds}
    reward_version: Optional[Tensor] = None  # (B,) int64 reward weights version that scored the row; -1 unscored

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __reduce__(self):
        """Pickled (e.g. by Ray, from a rollout worker) with its tensors as raw numpy bytes
        (:func:`tensor_bytes`: out of band, one copy into the object store) and each prompt's
        images once rather than once per sample, when its samples' ``vision`` rows are equal
        (they are in a worker's rollout); unpickled into tensors that own their memory."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        shared = _shared_image_rows(self.prompt_ids, self.vision) if self.vision else None
        if shared is not None:
            state["vision"] = {k: v[shared[0]] for k, v in self.vision.items()}
        return _rollout_from_wire, (_pack(state), None if shared is None else shared[1])

    def to_batch(self) -> dict[str, Tensor]:
        """The tensors the learner needs, as a dict with batch-first values (sharded by rank).

        Raises:
            ValueError: the rollout has not been scored yet.
        """
        if self.scores is None:
            raise ValueError("Rollout.to_batch: rollout has no scores; score it with the reward model first")
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                **flat_vision(self.vision), "response_ids": self.response_ids,
                "response_mask": self.response_mask, "logprobs": self.logprobs, "scores": self.scores}

    @staticmethod
    def concat(parts: list["Rollout"], pad_token_id: int, parallel: bool = False) -> "Rollout":
        """Join rollouts; prompts re-left-padded, responses re-right-padded.

        A source missing from a part (its scoring failed) is NaN on that part's rows, a missing
        ``reward_version`` -1. Each
        phase's seconds are the max over the parts when they ran side by side (``parallel``,
        e.g. one per rollout worker: the phase's wall time), else their sum.

        Raises:
            ValueError: ``parts`` is empty.
        """
        if not parts:
            raise ValueError("Rollout.concat: no rollouts to join")
        scores = [p.scores for p in parts]
        labels = list(dict.fromkeys(label for p in parts for label in p.source_scores))
        phases = list(dict.fromkeys(phase for p in parts for phase in p.timings))
        return Rollout(
            prompt_ids=[i for p in parts for i in p.prompt_ids],
            sample_index=[i for p in parts for i in p.sample_index],
            input_ids=pad_cat([p.input_ids for p in parts], pad_token_id, left=True),
            attention_mask=pad_cat([p.attention_mask for p in parts], 0, left=True),
            vision={k: cat_rows([p.vision[k] for p in parts]) for k in parts[0].vision},
            response_ids=pad_cat([p.response_ids for p in parts], pad_token_id, left=False),
            response_mask=pad_cat([p.response_mask for p in parts], 0, left=False),
            logprobs=pad_cat([p.logprobs for p in parts], 0.0, left=False),
            finish_reason=[r for p in parts for r in p.finish_reason],
            texts=[t for p in parts for t in p.texts],
            policy_version=torch.cat([p.policy_version for p in parts]),
            scores=None if any(s is None for s in scores) else torch.cat(scores),
            source_scores={label: torch.cat([p.source_scores.get(label, torch.full((len(p),), float("nan")))
                                             for p in parts]) for label in labels},
            timings={phase: (max if parallel else sum)(p.timings.get(phase, 0.0) for p in parts) for phase in phases},
            reward_version=torch.cat([p.reward_version if p.reward_version is not None
                                      else torch.full((len(p),), -1, dtype=torch.int64) for p in parts]),
        )


    def select(self, rows: Tensor) -> "Rollout":
        """The rollout's rows ``rows`` ((K,) int64 indices), in that order; every per-row field
        (lists, tensors, and dicts of them) is indexed, other values are kept."""
        index = rows.tolist()

        def pick(value):
            if isinstance(value, Tensor):
                return value[rows]
            if isinstance(value, list):
                return [value[i] for i in index]
            if isinstance(value, dict):
                return {k: pick(v) for k, v in value.items()}
            return value

        return Rollout(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


@dataclass
class Experience:
    """A rollout turned into PPO training data by the learner group (Schulman et al. 2017).

    With GAE every field is set; critic-free PPO (GRPO, RLOO, ...) has no ``values``, ``rewards``
    or ``returns``, and no ``ref_logprobs`` when it has no KL leash (``kl_coef`` 0)."""

    input_ids: Tensor                 # (B, T) prompt tokens, left-padded
    attention_mask: Tensor            # (B, T)
    vision: dict[str, Tensor]         # {name: (B, ...)} the images' processor outputs, row-batched
    response_ids: Tensor              # (B, R)
    response_mask: Tensor             # (B, R) 1 on real response tokens of scored rows
    old_logprobs: Tensor              # (B, R) log-probs under the policy before the update
    advantages: Tensor                # (B, R) GAE whitened over response_mask, or a critic-free estimator's
    is_weights: Tensor                # (B, R) min(π_old / π_behaviour, tis_cap) per token; ≈1 on-policy
    ref_logprobs: Optional[Tensor] = None  # (B, R) log-probs under the frozen reference policy; None: no KL leash
    values: Optional[Tensor] = None   # (B, R) value model before the update; None when critic-free
    rewards: Optional[Tensor] = None  # (B, R) -kl_coef*KL per token + score on the last token (GAE only)
    returns: Optional[Tensor] = None  # (B, R) advantages + values, the value targets (GAE only)

    def to_dict(self) -> dict[str, Tensor]:
        """Fields as a flat dict of tensors (what the learner shards by rank; ``vision`` under
        :func:`flat_vision` keys); None fields are left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vision"}
        return {**{k: v for k, v in out.items() if v is not None}, **flat_vision(self.vision)}


@dataclass
class PreferencePair:
    """One human (or simulated) choice between two responses to the same prompt."""

    prompt_id: str                    # record id of the prompt (and its image)
    chosen: str                       # preferred response text
    rejected: str                     # the other response text
    annotator: str                    # who chose, e.g. "simulated-gold", a person's id or "anonymous"
    source: str                       # "simulated", "import:<kind>" or "labeling-page"
    # provenance of imported pairs; None where the source does not say
    origin: Optional[str] = None          # the file and line/row/entry the judgement came from
    chosen_model: Optional[str] = None    # the model that wrote `chosen`
    rejected_model: Optional[str] = None  # the model that wrote `rejected`
    aspect_scores: Optional[str] = None   # JSON {aspect: [chosen's score, rejected's score]}
    rationale: Optional[str] = None       # the annotator's reason, as written
