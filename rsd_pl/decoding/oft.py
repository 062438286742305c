"""The `oft` mode: OpenVLA-OFT's own L1 head on its own checkpoint, behind the engine's interface.

It shares nothing with the RSD modes but the observation and the statistics, so that the published
baseline runs through the same policy, episode runner and report as every other mode. The model
is `rsd_pl.models.openvla.oft.OFTPolicyModel` (or anything with `normalized_actions(batch)`,
`stats.unnormalize` and `chunk_len`); post-processing is OFT's own (`oft_env_actions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rsd_pl.decoding.config import DecodingConfig
from rsd_pl.decoding.engine import ChunkResult, batch_size_of, to_device
from rsd_pl.decoding.interfaces import module_device
from rsd_pl.decoding.stats import ChunkStats, SectionTimer
from rsd_pl.errors import RsdError


@dataclass
class _Shape:
    chunk_len: int


class OFTEngine:
    """decode_chunk(batch) -> ChunkResult: one bidirectional forward, OFT's un-normalisation and gripper."""

    def __init__(self, model: Any, config: DecodingConfig) -> None:
        config.validate()
        if config.mode != "oft":
            raise RsdError(f"OFTEngine runs decoding.mode='oft', not {config.mode!r}")
        self.model, self.config = model, config
        self.main = _Shape(model.chunk_len)  # what RSDPolicy reads (engine.main.chunk_len)
        self.device = module_device(model)
        model.eval()

    @torch.inference_mode()
    def decode_chunk(self, batch: dict) -> ChunkResult:
        from rsd_pl.models.openvla.oft import oft_env_actions

        batch = to_device(batch, self.device)
        stats = ChunkStats(mode="oft", num_layers=0, batch_size=batch_size_of(batch))
        timer = SectionTimer(stats, self.device)
        start = timer.now()
        with timer.section("prefill_s"):
            normalized = self.model.normalized_actions(batch)  # (B, T, D)
        stats.main_forwards = 1
        with timer.section("decode_s"):
            actions = oft_env_actions(self.model.stats.unnormalize(normalized.numpy())).astype(np.float32)
        stats.total_s = timer.now() - start
        return ChunkResult(actions=actions, normalized_actions=normalized, codes=None, stats=stats)

