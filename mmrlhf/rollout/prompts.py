"""The stream of RL prompts: unlabeled records of the feedback/RL pool, reshuffled each epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class PromptSource:
    """Batches of prompt records (``id``, ``image`` and ``video`` bytes, ``prompt``, ``reference``), in a seeded order.

    The RL pool is unlabeled for the policy: a record's ``reference`` (None where there is none)
    is for the reward sources (rule functions such as the gold score), which rollout workers
    pass it to; it never enters the policy's input. The position
    (``epoch``, ``index``) is plain state, so a resumed run continues with the next prompt.

    Raises:
        ValueError: ``batch_size`` is not in [1, number of records].
    """

    def __init__(self, table: pa.Table, batch_size: int, seed: int) -> None:
        if not 1 <= batch_size <= table.num_rows:
            raise ValueError(f"PromptSource: batch_size={batch_size}, expected 1..{table.num_rows} (records in the pool)")
        columns = ["id", "image", "video", "prompt", "reference"]  # a table without "video" holds images only
        self.records = table.select([c for c in columns if c in table.column_names]).to_pylist()
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

    def next_batch(self) -> list[dict[str, Any]]:
        """The next ``batch_size`` records; a batch never straddles two epochs."""
        if self.index + self.batch_size > len(self.records):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        batch = [self.records[i] for i in self._order[self.index:self.index + self.batch_size]]
        self.index += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        """Position in the stream (JSON-serialisable)."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()
