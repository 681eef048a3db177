"""Reward sources: the learned reward model, CLIPScore and rule (verifiable) functions, and their weighted sum.

Plain Python, no Ray: the Serve deployment (``serve_app.py``) wraps :class:`RewardSources`.
``reward.sources`` (:class:`mmrlhf.config.RewardSourceConfig`) names each source and its weight:

- ``model``: the run's learned reward model, a :class:`Scorer` (``RewardScorer``) over
  (image, text) pairs;
- ``clipscore``: zero-shot CLIPScore (Hessel et al. 2021), ``2.5 * max(cos, 0)`` of the same
  model's joint embedding (its CLIP towers), without the learned head; needs no reference;
- ``package.module:function``: a rule function, imported by that path, with the signature::

      fn(responses: list[str], references: list[str | None], prompts: list[str]) -> Sequence[float]

  called once per batch with the B responses, their records' references (None where a record
  has none) and prompts; it returns B real numbers (a list, tuple or 1-D array), NaN meaning
  "cannot score this one". This is the verifiable-reward function of veRL / EasyR1
  (``compute_score(solution, ground_truth)``), batched. Example:
  :func:`mmrlhf.data.digits.gold_reward`.

The total reward of a row is ``sum_s weight_s * score_s`` over the sources whose weight is not
0; a weight-0 source is computed for monitoring only. A NaN or inf score leaves the row
unscored in that source and, when the source is weighted, in the total (NaN): the learner
masks such rows and the metrics count them. A row is never given a made-up 0.

Errors, each a ValueError naming the source: a function that cannot be imported or is not
callable, when the sources are built (so a deployment fails at deploy time); one that raises,
returns another count than B or anything but real numbers, when it scores (naming the batch
size and what came back).
"""

from __future__ import annotations

import importlib
import numbers
import reprlib
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import numpy as np

from mmrlhf.config import CLIPSCORE_SOURCE, MODEL_SOURCE, TOTAL, WEIGHTS_SOURCES, RewardSourceConfig, check_reward_sources

RuleFunction = Callable[[list[str], list[Any], list[str]], Sequence[float]]
_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxlist = _repr.maxtuple = 4
_repr.maxstring = _repr.maxother = 40
_short = _repr.repr


class Scorer(Protocol):
    """The learned reward model as a source needs it (``mmrlhf.reward.scorer.RewardScorer`` has it).

    score: images, each uint8 (H, W) or (H, W, 3), and as many texts -> float32 (B,) scores.
    clip_score: the same -> float32 (B,) CLIPScores; called only for a ``clipscore`` source.
    load_weights: replace the weights in place from a directory.
    """

    def score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray: ...

    def clip_score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray: ...

    def load_weights(self, weights_dir: str) -> None: ...


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def load_function(name: str) -> RuleFunction:
    """The callable named by the import path ``package.module:function``.

    Raises ValueError naming the source when the module cannot be imported (with the cause),
    has no such attribute, or the attribute is not callable.
    """
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any error of the user's module at import: reported by name
        raise ValueError(f"reward source {name!r}: cannot import {module_name!r} "
                         f"({type(err).__name__}: {_first_line(err)})") from err
    if not hasattr(module, attribute):
        raise ValueError(f"reward source {name!r}: module {module_name!r} has no {attribute!r}")
    function = getattr(module, attribute)
    if not callable(function):
        raise ValueError(f"reward source {name!r}: {attribute!r} is a {type(function).__name__}, not callable")
    return function


def load_rule_functions(sources: Sequence[RewardSourceConfig]) -> dict[str, RuleFunction]:
    """{label: function} of the rule functions among ``sources`` (``model`` and ``clipscore`` left out).

    Raises mmrlhf.config.ConfigError (a ValueError) for a malformed list (see
    ``check_reward_sources``), ValueError from :func:`load_function`.
    """
    check_reward_sources(list(sources))
    return {s.label: load_function(s.name) for s in sources if s.name not in WEIGHTS_SOURCES}


def check_batch(n_images: int, texts: list[str], references: list[Any], prompts: list[str], where: str) -> None:
    """Raise ValueError, prefixed by ``where``, unless texts, references and prompts hold
    ``n_images`` items each, the texts and prompts being str and the references str or None."""
    for field, values, allowed in (("texts", texts, (str,)), ("references", references, (str, type(None))),
                                   ("prompts", prompts, (str,))):
        if len(values) != n_images:
            raise ValueError(f"{where}: {n_images} images but {len(values)} {field}")
        bad = next((i for i, value in enumerate(values) if not isinstance(value, allowed)), None)
        if bad is not None:
            expected = "str or None" if field == "references" else "str"
            raise ValueError(f"{where}: {field}[{bad}] is a {type(values[bad]).__name__}, expected {expected}")


def as_scores(name: str, result: Any, n: int) -> np.ndarray:
    """A source's raw output for a batch of ``n`` -> float32 (n,), NaN where not finite.

    Raises ValueError naming the source, ``n`` and what came back, unless ``result`` is a list,
    tuple or 1-D array of ``n`` real numbers (bools refused).
    """
    expected = f"expected a sequence of {n} floats (NaN: unscored)"
    if isinstance(result, np.ndarray):
        if result.ndim != 1 or result.dtype.kind not in "fiu":
            raise ValueError(f"reward source {name!r} returned an array of shape {result.shape} and dtype "
                             f"{result.dtype} for a batch of {n} responses; {expected}")
    elif isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        raise ValueError(f"reward source {name!r} returned a {type(result).__name__} ({_short(result)}) "
                         f"for a batch of {n} responses; {expected}")
    if len(result) != n:
        raise ValueError(f"reward source {name!r} returned {len(result)} values for a batch of {n} responses "
                         f"({_short(result)}); {expected}")
    if not isinstance(result, np.ndarray):
        bad = next((i for i, v in enumerate(result) if isinstance(v, bool) or not isinstance(v, numbers.Real)), None)
        if bad is not None:
            raise ValueError(f"reward source {name!r} returned a {type(result[bad]).__name__} at [{bad}] "
                             f"({_short(result)}) for a batch of {n} responses; {expected}")
    scores = np.asarray(result, dtype=np.float64)
    return np.where(np.isfinite(scores), scores, np.nan).astype(np.float32)


class RewardSources:
    """The sources of ``reward.sources`` and their weighted sum (see the module docstring).

    Args:
        sources: names and weights; the rule functions are imported here.
        scorer: the learned reward model, needed when a source is ``model`` or ``clipscore`` (it may be set
            later, e.g. when a Serve replica gets its weights: ``sources.scorer = ...``).

    Raises:
        ValueError: a malformed list, or a rule function that cannot be imported or called.
    """

    def __init__(self, sources: Sequence[RewardSourceConfig], scorer: Scorer | None = None) -> None:
        self._functions = load_rule_functions(sources)
        self.sources = list(sources)
        self.scorer = scorer

    @property
    def labels(self) -> list[str]:
        """Each source's metric label, in order (the keys of :meth:`score` besides ``total``)."""
        return [s.label for s in self.sources]

    @property
    def needs_model(self) -> bool:
        """Whether a source needs the learned reward model's weights (``model`` or ``clipscore``)."""
        return any(s.name in WEIGHTS_SOURCES for s in self.sources)

    def score(self, images: list[np.ndarray], texts: list[str], references: list[str | None],
              prompts: list[str]) -> dict[str, np.ndarray]:
        """Score B responses with every source.

        images: B uint8 (H, W) or (H, W, 3) (for the learned model); texts: the responses;
        references: each record's reference or None; prompts: each record's prompt.
        Returns {label: float32 (B,)} per source, NaN where unscored, and ``"total"``: float32
        (B,), the weighted sum over the sources with a non-zero weight (NaN where one of them is).

        Raises:
            ValueError: lists of different lengths or types; a source that raises or returns
                something else than B real numbers (names it, see :func:`as_scores`).
            RuntimeError: a ``model`` or ``clipscore`` source and no scorer set.
        """
        n = len(images)
        check_batch(n, texts, references, prompts, "RewardSources.score")
        if self.needs_model and self.scorer is None:
            raise RuntimeError("RewardSources: a source needs the learned reward model but no scorer is loaded")
        scores = {s.label: self._score_one(s, images, list(texts), list(references), list(prompts), n)
                  for s in self.sources}
        total = np.zeros(n)
        for s in self.sources:
            if s.weight != 0:
                total += s.weight * scores[s.label].astype(np.float64)
        scores[TOTAL] = np.where(np.isfinite(total), total, np.nan).astype(np.float32)
        return scores

    def _score_one(self, source: RewardSourceConfig, images: list[np.ndarray], texts: list[str],
                   references: list[str | None], prompts: list[str], n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        try:
            if source.name == MODEL_SOURCE:
                result = self.scorer.score(images, texts)
            elif source.name == CLIPSCORE_SOURCE:
                result = self.scorer.clip_score(images, texts)
            else:
                result = self._functions[source.label](texts, references, prompts)
        except Exception as err:  # the user's code: re-raised naming it, the batch and the cause
            raise ValueError(f"reward source {source.name!r} raised {type(err).__name__} on a batch of {n} "
                             f"responses: {_first_line(err)}") from err
        return as_scores(source.name, result, n)
