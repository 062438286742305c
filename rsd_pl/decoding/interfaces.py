"""The model interfaces the engine codes against (docs/contracts.md), as structural types.

The engine never imports the concrete classes: anything with these methods (the real
`MainModel` / `DraftModel` / `ActionRFSQAE` / `ActionNormalizer`, or a test stand-in) works.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class PrefillLike(Protocol):
    query_hidden: Tensor  # [B, T, H]
    layer1_logits: Tensor  # [B, P, n, V]: P token positions, n tokens each, V = K**g codes per token
    cache: Any  # transformers Cache (mutated in place by extend / crop_cache)
    cache_len: int  # tokens in the cache after the prefill (prefix + Q block)


class MainLike(Protocol):
    chunk_len: int
    latent_dim: int
    num_layers: int
    num_levels: int

    def prefill(self, batch: dict) -> PrefillLike: ...

    def extend(self, codes: Tensor, first_layer: int, cache: Any) -> Tensor:
        """token codes [B, P, n, m] of layers first_layer.. -> logits [B, m, P, n, V] of layers first_layer+1.."""

    def crop_cache(self, cache: Any, prefill_len: int, num_blocks: int) -> Any: ...

    def parallel_logits(self, query_hidden: Tensor) -> Tensor: ...  # [B, L, P, n, V]

    def l1_actions(self, query_hidden: Tensor) -> Tensor: ...  # [B, T, D] normalised

    def parameters(self) -> Any: ...


class DraftLike(Protocol):
    """A draft with its own cache, fed incrementally like the main model."""

    def start(self, query_hidden: Tensor) -> Any:
        """query_hidden [B, T, H] -> a fresh draft cache holding no layer blocks yet."""

    def extend(self, codes: Tensor, first_layer: int, cache: Any) -> Tensor:
        """token codes [B, P, n, m] of layers first_layer.. (first_layer = blocks cached + 1)
        -> logits [B, m, P, n, V] of layers first_layer+1..; appends the blocks to the cache."""

    def crop_cache(self, cache: Any, num_blocks: int) -> None: ...  # keep the first num_blocks layer blocks


class TokenizerLike(Protocol):
    num_layers: int

    def decode_codes(self, codes: Tensor) -> Tensor:
        """token codes [B, P, n, m] (any prefix m) -> normalised actions [B, T, D]."""


class NormalizerLike(Protocol):
    def unnormalize(self, actions: Any) -> Any: ...


def module_device(module: Any) -> torch.device:
    """Device of a module's first parameter (CPU for a parameterless module)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
