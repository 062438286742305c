"""The one boundary between model and environment: a policy backed by the decoding engine.

The env loop builds the model batch (docs/contracts.md, `rsd_pl.data.obs`) and calls
`select_action`; it never touches model internals. Each chunk of T actions is executed open loop
(all T steps, as OpenVLA-OFT does on LIBERO), then the engine is queried again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from rsd_pl.decoding import ChunkStats, DecodingEngine, StatsAggregator
from rsd_pl.decoding.engine import batch_size_of
from rsd_pl.errors import RsdError


class RSDPolicy:
    """`reset()` / `select_action(batch)` / `predict_action_chunk(batch)` over a DecodingEngine."""

    def __init__(self, engine: DecodingEngine, steps_per_chunk: int | None = None) -> None:
        chunk_len = engine.main.chunk_len
        self.steps_per_chunk = chunk_len if steps_per_chunk is None else steps_per_chunk
        if not 1 <= self.steps_per_chunk <= chunk_len:
            raise RsdError(f"steps_per_chunk={steps_per_chunk} must be in 1..{chunk_len} (the chunk length)")
        self.engine = engine
        self.stats = StatsAggregator()
        """Statistics of every chunk this policy decoded, across episodes (`stats.chunks`, in order);
        the episode runner slices out one episode's chunks."""
        self.last_stats: ChunkStats | None = None
        self._queue: deque[np.ndarray] = deque()

    @property
    def mode(self) -> str:
        return self.engine.config.mode

    @property
    def will_query(self) -> bool:
        """Whether the next `select_action` queries the engine (the current chunk is used up): the env
        must then render this step's camera frames."""
        return not self._queue

    def reset(self) -> None:
        """Start of an episode: drop queued actions (statistics are kept, see `stats`)."""
        self._queue.clear()

    def predict_action_chunk(self, batch: dict) -> tuple[np.ndarray, ChunkStats]:
        """batch (B observations) -> env actions float32 [B, T, D] and the chunk's statistics."""
        result = self.engine.decode_chunk(batch)
        self.stats.add(result.stats)
        self.last_stats = result.stats
        return result.actions, result.stats

    def select_action(self, batch: dict | Callable[[], dict]) -> np.ndarray:
        """batch of ONE observation -> the next env action float32 (D,). Queries the engine only
        when the queue of the current chunk is empty.

        `batch` may be a function returning the batch: it is called only when the engine is
        queried, so an env renders its cameras once per chunk instead of once per step."""
        if not self._queue:
            if callable(batch):
                batch = batch()
            if batch_size_of(batch) != 1:
                raise RsdError(f"select_action takes a batch of 1 observation, got {batch_size_of(batch)}")
            actions, _ = self.predict_action_chunk(batch)
            self._queue.extend(actions[0, : self.steps_per_chunk])
        return self._queue.popleft()
