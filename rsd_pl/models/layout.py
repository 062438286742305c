"""The token layout of RFSQ actions: how one residual layer's latent scalars become tokens.

    latent of a chunk: N = P x d scalars (P positions per layer block, d scalars per position)
    a token: g scalars of one position, its code the tuple of their K-level digits, one of K**g
    a layer: P x n tokens, n = d / g per position; a chunk: P x n x L tokens

The tokenizer quantises every scalar on its own (residual FSQ digits in [0, K)); a token joins the g
digits of its scalars into one code, `sum_i digit_i * K**(g-1-i)` (FSQ's implicit codebook, Mentzer
et al. 2023, over a group instead of the whole latent). The main model and the draft see only tokens:
one K**g-way softmax per token and layer, and a layer block of P sequence positions holding n tokens
each. The L1 head and the query block keep T = chunk_len positions; when P < T each token position
reads the T / P consecutive query outputs it covers.

The original layout is P = T = 8, d = 16, g = 1, K = 7: 128 tokens of 7 codes per layer. Grouped
layouts trade per-layer tokens for vocabulary, e.g. P = 4, d = 4, g = 4: 4 tokens of 2,401 codes.
The all-centre code `(K**g - 1) / 2` dequantises to 0 in every layer, like the centre digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rsd_pl.errors import RsdError

MAX_VOCAB = 4096
"""Largest K**g a head may predict: one token is one softmax of that width per layer (at 7B scale a
4096-wide head per layer is already 16.8M weights)."""


@dataclass(frozen=True)
class TokenLayout:
    chunk_len: int
    """T: action steps per chunk (the query block's length)."""
    latent_dim: int
    """d: latent scalars per position."""
    num_levels: int
    """K: levels per scalar and layer (odd)."""
    positions: int
    """P: sequence positions per layer block (divides T)."""
    group: int = 1
    """g: scalars per token."""

    @classmethod
    def of(cls, chunk_len: int, latent_dim: int, num_levels: int, positions: int | None = None,
           group: int = 1, where: str = "") -> TokenLayout:
        """Validated layout; `positions=None` means one position per step (P = T). `where` prefixes the
        setting names in errors (e.g. "model.network.")."""
        layout = cls(chunk_len, latent_dim, num_levels, chunk_len if positions is None else positions, group)
        layout.validate(where)
        return layout

    @classmethod
    def of_config(cls, cfg, where: str = "") -> TokenLayout:
        """The layout of a config object with chunk_len, latent_dim, num_levels, positions and group attributes
        (MainModelConfig, DraftConfig)."""
        return cls.of(cfg.chunk_len, cfg.latent_dim, cfg.num_levels, cfg.positions, cfg.group, where=where)

    def validate(self, where: str = "") -> None:
        for name in ("chunk_len", "latent_dim", "positions", "group"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RsdError(f"{where}{name}={value!r} must be an integer >= 1")
        if self.num_levels < 3 or self.num_levels % 2 == 0:
            raise RsdError(f"{where}num_levels={self.num_levels} must be odd and >= 3 (a level at 0)")
        if self.chunk_len % self.positions:
            raise RsdError(f"{where}positions={self.positions} does not divide chunk_len={self.chunk_len}: each "
                           "token position reads a whole number of query outputs")
        if self.latent_dim % self.group:
            raise RsdError(f"{where}latent_dim={self.latent_dim} (scalars per position) is not divisible by "
                           f"group={self.group} (scalars per token)")
        if self.vocab_size > MAX_VOCAB:
            raise RsdError(f"{where}num_levels={self.num_levels} with group={self.group} gives "
                           f"{self.num_levels}**{self.group} = {self.vocab_size} codes per token, more than a head "
                           f"may predict ({MAX_VOCAB}); lower group or num_levels")

    @property
    def tokens_per_position(self) -> int:
        """n = d / g."""
        return self.latent_dim // self.group

    @property
    def vocab_size(self) -> int:
        """K**g codes per token."""
        return self.num_levels**self.group

    @property
    def tokens_per_layer(self) -> int:
        return self.positions * self.tokens_per_position

    @property
    def latent_size(self) -> int:
        """N = P x d latent scalars per chunk."""
        return self.positions * self.latent_dim

    @property
    def queries_per_position(self) -> int:
        """r = T / P query outputs per token position."""
        return self.chunk_len // self.positions

    @property
    def centre_code(self) -> int:
        """The code whose digits are all the centre level: dequantises to 0."""
        return (self.vocab_size - 1) // 2

    def describe(self) -> str:
        """One line, e.g. '16 scalars (4 positions x 4), tokens of 4 scalars: 4 tokens x 2401 codes per layer'."""
        return (f"{self.latent_size} scalars ({self.positions} positions x {self.latent_dim}), tokens of "
                f"{self.group} scalar{'s' if self.group > 1 else ''} at K {self.num_levels}: "
                f"{self.tokens_per_layer} tokens x {self.vocab_size} codes per layer")

    def _powers(self, device: torch.device) -> Tensor:
        return self.num_levels ** torch.arange(self.group - 1, -1, -1, device=device)  # (g,), most significant first

    def join(self, digits: Tensor) -> Tensor:
        """Per-scalar digits [..., d, m] in [0, K) -> token codes [..., n, m] in [0, K**g)."""
        if self.group == 1:
            return digits
        grouped = digits.unflatten(-2, (self.tokens_per_position, self.group))  # (..., n, g, m)
        return (grouped * self._powers(digits.device).view(-1, 1)).sum(-2)

    def split(self, codes: Tensor) -> Tensor:
        """Token codes [..., n, m] in [0, K**g) -> per-scalar digits [..., d, m] in [0, K)."""
        if self.group == 1:
            return codes
        digits = codes.unsqueeze(-2).div(self._powers(codes.device).view(-1, 1), rounding_mode="floor")
        return (digits % self.num_levels).flatten(-3, -2)  # (..., n, g, m) -> (..., d, m)

    def to_dict(self) -> dict[str, int]:
        return {"chunk_len": self.chunk_len, "latent_dim": self.latent_dim, "num_levels": self.num_levels,
                "positions": self.positions, "group": self.group}
