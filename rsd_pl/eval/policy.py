"""The one boundary between model and environment: a policy backed by the decoding engine.

The env loop builds the model batch (docs/contracts.md, `rsd_pl.data.obs`) and calls
`select_action`; it never touches model internals. Each chunk of T actions is executed open loop
(all T steps, as OpenVLA-OFT does on LIBERO), then the engine is queried again.

Imports: rsd_pl.decoding only (no env, no Lightning).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from rsd_pl.decoding import ChunkStats, DecodingEngine, StatsAggregator
from rsd_pl.decoding.engine import batch_size_of
from rsd_pl.errors import RsdError


class RSDPolicy:
    """`reset()` / `select_action(batch)` / `predict_action_chunk(batch)` over a DecodingEngine, and the batched
    form of `select_action` for N envs stepped together (`reset(num_envs)`, `needs_chunk`, `queue_chunks`,
    `next_action`): one action queue per env, the envs that need a chunk decoded as one batch."""

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
        self._queues: list[deque[np.ndarray]] = [deque()]

    @property
    def mode(self) -> str:
        return self.engine.config.mode

    @property
    def decoding(self) -> dict:
        """The engine settings, as logged with each episode."""
        return self.engine.config.to_dict()

    @property
    def will_query(self) -> bool:
        """Whether the next `select_action` queries the engine (the current chunk is used up): the env
        must then render this step's camera frames."""
        return self.needs_chunk(0)

    def reset(self, num_envs: int = 1) -> None:
        """Start of an episode, or of `num_envs` episodes stepped together: drop queued actions (statistics
        are kept, see `stats`)."""
        self._queues = [deque() for _ in range(num_envs)]

    def predict_action_chunk(self, batch: dict) -> tuple[np.ndarray, ChunkStats]:
        """batch (B observations) -> env actions float32 [B, T, D] and the chunk's statistics."""
        result = self.engine.decode_chunk(batch)
        self.stats.add(result.stats)
        self.last_stats = result.stats
        return result.actions, result.stats

    def needs_chunk(self, env: int) -> bool:
        """Whether env `env`'s queue is used up: its next action needs a decoded chunk."""
        return not self._queues[env]

    def queue_chunks(self, envs: list[int], batch: dict) -> ChunkStats:
        """Decode `batch` (row i is the observation of env `envs[i]`) as one chunk batch and queue each env's
        actions [T, D]; returns the batch's statistics (shared by its envs)."""
        actions, stats = self.predict_action_chunk(batch)
        for row, env in enumerate(envs):
            self._queues[env].extend(actions[row, : self.steps_per_chunk])
        return stats

    def next_action(self, env: int) -> np.ndarray:
        """The next queued action float32 (D,) of env `env`."""
        return self._queues[env].popleft()

    def select_action(self, batch: dict | Callable[[], dict]) -> np.ndarray:
        """batch of ONE observation -> the next env action float32 (D,). Queries the engine only
        when the queue of the current chunk is empty.

        `batch` may be a function returning the batch: it is called only when the engine is
        queried, so an env renders its cameras once per chunk instead of once per step."""
        if self.needs_chunk(0):
            if callable(batch):
                batch = batch()
            if batch_size_of(batch) != 1:
                raise RsdError(f"select_action takes a batch of 1 observation, got {batch_size_of(batch)}")
            self.queue_chunks([0], batch)
        return self.next_action(0)
