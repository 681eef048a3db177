"""Replay buffer of experience rows for off-policy learning (SAC), one per learner rank.

A first-in-first-out buffer of whole rows (one (prompt, sample) each), kept as the batches they
arrived in, since prompts and responses of different steps have different padded lengths;
`sample` pads the rows it draws to a common length. Uniform sampling with replacement, as in
SAC (Haarnoja et al. 2018) and DQN (Mnih et al. 2015). No Ray, no torch.distributed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmrlhf.types import cat_rows, pad_cat


class ReplayBuffer:
    """At most ``capacity`` rows of ``{key: (b, ...)}`` batches; the oldest rows leave first.

    padding: ``{key: (value, left)}`` for keys whose dim 1 varies between batches (prompt tokens
    are left-padded, response tokens right-padded); other keys (images of different sizes) are
    padded at the end of every dim with 0 (:func:`mmrlhf.types.cat_rows`).
    Raises ValueError for ``capacity < 1``.
    """

    def __init__(self, capacity: int, padding: dict[str, tuple[float, bool]]) -> None:
        if capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity={capacity}, expected an integer >= 1 (rows)")
        self.capacity = capacity
        self.padding = padding
        self.chunks: list[dict[str, Tensor]] = []

    def __len__(self) -> int:
        return sum(_rows(chunk) for chunk in self.chunks)

    def add(self, batch: dict[str, Tensor]) -> None:
        """Append the rows of ``batch`` ``{key: (b, ...)}``; drop the oldest rows beyond capacity.

        Raises ValueError when the keys differ from the buffer's or the row counts differ.
        """
        if self.chunks and set(batch) != set(self.chunks[0]):
            raise ValueError(f"ReplayBuffer.add: keys {sorted(batch)}, the buffer holds {sorted(self.chunks[0])}")
        if len({len(v) for v in batch.values()}) != 1:
            raise ValueError(f"ReplayBuffer.add: row counts differ: { {k: len(v) for k, v in batch.items()} }")
        self.chunks.append({k: v.clone() for k, v in batch.items()})
        excess = len(self) - self.capacity
        while excess > 0:
            oldest = _rows(self.chunks[0])
            if oldest <= excess:
                self.chunks.pop(0)
                excess -= oldest
            else:
                self.chunks[0] = {k: v[excess:] for k, v in self.chunks[0].items()}
                excess = 0

    def sample(self, n: int, generator: torch.Generator, block: int = 1) -> dict[str, Tensor]:
        """``n`` rows drawn uniformly with replacement, padded to common lengths: ``{key: (n, ...)}``.

        ``block``: draw aligned blocks of ``block`` consecutive rows (rows ``[k·block, (k+1)·block)``,
        the last block possibly shorter) uniformly with replacement instead of single rows, and keep
        the first ``n`` rows. Each row is still equally likely; rows of one block come together. With
        ``block = rl.samples_per_prompt`` a block is one prompt's samples (rollouts keep them
        contiguous), so the learner runs each drawn prompt once for all its samples
        (:func:`mmrlhf.models.policy.prefill`). ``block=1`` is plain row sampling.
        Raises ValueError when the buffer is empty or ``block < 1``.
        """
        size = len(self)
        if size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add experience first")
        if block < 1:
            raise ValueError(f"ReplayBuffer.sample: block={block}, expected an integer >= 1 (rows)")
        index: list[int] = []
        while len(index) < n:  # a short last block can leave the first draw short
            for b in torch.randint(-(-size // block), (-(-(n - len(index)) // block),), generator=generator).tolist():
                index += range(b * block, min((b + 1) * block, size))
        index = index[:n]
        starts = torch.tensor([0] + [_rows(c) for c in self.chunks]).cumsum(0).tolist()
        rows = []
        for i in index:
            c = next(j for j in range(len(self.chunks)) if i < starts[j + 1])
            rows.append({k: v[i - starts[c]:i - starts[c] + 1] for k, v in self.chunks[c].items()})
        return {k: self._join([row[k] for row in rows], k) for k in rows[0]}

    def _join(self, parts: list[Tensor], key: str) -> Tensor:
        if key in self.padding:
            value, left = self.padding[key]
            return pad_cat(parts, value, left)
        return cat_rows(parts)

    def state_dict(self) -> dict[str, Tensor]:
        """The rows as flat ``{"<chunk>.<key>": tensor}`` (what safetensors stores)."""
        return {f"{i}.{k}": v.contiguous() for i, chunk in enumerate(self.chunks) for k, v in chunk.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the rows with those of `state_dict`'s output."""
        chunks: dict[int, dict[str, Tensor]] = {}
        for name, value in state.items():
            i, key = name.split(".", 1)
            chunks.setdefault(int(i), {})[key] = value
        self.chunks = [chunks[i] for i in sorted(chunks)]


def _rows(chunk: dict[str, Tensor]) -> int:
    return len(next(iter(chunk.values())))
