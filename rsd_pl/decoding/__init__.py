"""The decoding engine (plain torch; no Lightning, no env): modes oft / l1 / parallel / ar / speculative,
acceptance rules exact / sampling / relaxed, per-chunk statistics."""

from rsd_pl.decoding.config import ACCEPTANCE_RULES, MODES, RSD_MODES, DecodingConfig
from rsd_pl.decoding.engine import ChunkResult, DecodingEngine, ReferenceCheckedEngine
from rsd_pl.decoding.oft import OFTEngine
from rsd_pl.decoding.speculative import autoregressive_decode, speculative_decode
from rsd_pl.decoding.stats import ChunkStats, StatsAggregator

__all__ = [
    "ACCEPTANCE_RULES",
    "MODES",
    "RSD_MODES",
    "OFTEngine",
    "ReferenceCheckedEngine",
    "ChunkResult",
    "ChunkStats",
    "DecodingConfig",
    "DecodingEngine",
    "StatsAggregator",
    "autoregressive_decode",
    "speculative_decode",
]
