"""Per-chunk decoding statistics, their aggregate, and a CUDA-aware section timer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

TIMED_SECTIONS = ("prefill_s", "draft_s", "verify_s", "decode_s")


@dataclass
class ChunkStats:
    """What one call of the engine did. Depth lists are indexed by layer - 1 (layer 1 is never
    proposed: the prefill decides it). Counts are summed over the batch elements."""

    mode: str
    num_layers: int
    batch_size: int = 1
    main_forwards: int = 0
    """Backbone passes of the main model (prefill + extend calls)."""
    draft_forwards: int = 0
    proposed_by_depth: list[int] = field(default_factory=list)
    accepted_by_depth: list[int] = field(default_factory=list)
    codes_compared: int = 0
    """Draft codes checked against the main model's argmax (verified layers only)."""
    codes_agreed: int = 0
    layers_decoded: int = 0
    early_exit: bool = False
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    """Main-model forwards after the prefill (verify passes, or the ar steps) and acceptance checks."""
    decode_s: float = 0.0
    """RFSQ decode, un-normalisation, early-exit checks."""
    deviation: list[float] | None = None
    """Per batch element: max abs gap of the normalised actions from a reference mode's decode of the same
    observation (rsd_pl.decoding.engine.ReferenceCheckedEngine); None when not measured."""
    total_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.proposed_by_depth:
            self.proposed_by_depth = [0] * self.num_layers
            self.accepted_by_depth = [0] * self.num_layers

    @property
    def code_agreement(self) -> float | None:
        return self.codes_agreed / self.codes_compared if self.codes_compared else None

    @property
    def acceptance_rate(self) -> float | None:
        proposed = sum(self.proposed_by_depth)
        return sum(self.accepted_by_depth) / proposed if proposed else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["code_agreement"] = self.code_agreement
        out["acceptance_rate"] = self.acceptance_rate
        return out


class SectionTimer:
    """Adds wall time of `with timer.section("draft_s"):` blocks to a ChunkStats field.
    Synchronises CUDA before reading the clock so GPU work is charged to its own section."""

    def __init__(self, stats: ChunkStats, device: torch.device) -> None:
        self.stats = stats
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            setattr(self.stats, name, getattr(self.stats, name) + self.now() - start)


class StatsAggregator:
    """Collects ChunkStats of one mode and summarises them (latency percentiles, acceptance by depth)."""

    def __init__(self) -> None:
        self.chunks: list[ChunkStats] = []

    def add(self, stats: ChunkStats) -> None:
        self.chunks.append(stats)

    def __len__(self) -> int:
        return len(self.chunks)

    def summary(self) -> dict:
        if not self.chunks:
            return {"chunks": 0}
        latency_ms = np.array([c.total_s for c in self.chunks]) * 1000.0
        proposed = np.sum([c.proposed_by_depth for c in self.chunks], axis=0)
        accepted = np.sum([c.accepted_by_depth for c in self.chunks], axis=0)
        compared = sum(c.codes_compared for c in self.chunks)
        agreed = sum(c.codes_agreed for c in self.chunks)
        return {
            "chunks": len(self.chunks),
            "latency_p50_ms": float(np.percentile(latency_ms, 50)),
            "latency_p95_ms": float(np.percentile(latency_ms, 95)),
            "latency_mean_ms": float(latency_ms.mean()),
            "main_forwards_per_chunk": float(np.mean([c.main_forwards for c in self.chunks])),
            "draft_forwards_per_chunk": float(np.mean([c.draft_forwards for c in self.chunks])),
            "layers_decoded_per_chunk": float(np.mean([c.layers_decoded for c in self.chunks])),
            "early_exit_rate": float(np.mean([c.early_exit for c in self.chunks])),
            "acceptance_rate": float(accepted.sum() / proposed.sum()) if proposed.sum() else None,
            "acceptance_rate_by_depth": [
                float(a / p) if p else None for a, p in zip(accepted, proposed, strict=True)
            ],
            "code_agreement": agreed / compared if compared else None,
            **{
                f"{name[:-2]}_mean_ms": float(np.mean([getattr(c, name) for c in self.chunks]) * 1000.0)
                for name in TIMED_SECTIONS
            },
        }
