"""The RFSQ action tokenizer: an autoencoder over action chunks with a residual finite scalar quantiser.

    actions [B, T, D] --encoder--> z [B, P, d] in (-1, 1)
      --residual FSQ, L layers of K levels--> digits [B, P, d, L] in [0, K)
      --token layout: g digits per token--> codes int64 [B, P, n, L] in [0, K**g), n = d / g
      --dequantise any prefix m--> z_m [B, P, d] --decoder--> actions [B, T, D]

Quantiser. Every latent scalar is quantised on its own (finite scalar quantisation), layer by
layer: layer l rounds the residual left by layers < l to K evenly spaced levels spanning
`[-s_l, s_l]`, with `s_l = (K - 1) ** -l`. The rounding error of a layer is at most half a step,
`s_l / (K - 1) = s_(l+1)`, so each layer exactly covers what the previous one left: coarse to fine,
a base-(K-1) expansion of z with digits in {-(K-1)/2 .. (K-1)/2}. After L = 8 layers of K = 7 the
latent is known to 6**-8 / 2 ~ 1e-7.

Tokens (`rsd_pl.models.layout`): the latent has N = P x d scalars (P positions, d per position) and
a token joins the digits of g scalars into one code of K**g. The original layout is P = T = 8,
d = 16, g = 1: a layer is 128 one-scalar tokens of 7 codes. A library FSQ with `levels=[7] * 16`
would join all 16 scalars of a step (7**16 ~ 3.3e13 codes: no head can predict that); grouped
layouts join a few (4 scalars of K 7: 2,401 codes).

Any prefix decodes (`decode_codes(codes[..., :m])`); training with quantise-dropout (a random
prefix depth per sample, `sample_depths`) makes the coarse prefixes good on their own.
Gradients pass the rounding straight through (z_q = z + sg(z_q - z)).

Plain torch: no Lightning here. `UniformBinTokenizer` is the OpenVLA-style 256-bin baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.errors import RsdError
from rsd_pl.models.layout import TokenLayout

if TYPE_CHECKING:
    from rsd_pl.registry import Artifact, Registry


class ResidualFSQ(nn.Module):
    """Residual scalar quantiser: L layers, K (odd) levels per scalar, scales (K-1)**-l."""

    def __init__(self, num_layers: int = 8, num_levels: int = 7) -> None:
        super().__init__()
        if num_levels < 3 or num_levels % 2 == 0:
            raise ValueError(f"num_levels must be odd and >= 3 (a level at 0), got {num_levels}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.half = (num_levels - 1) // 2  # digits run over -half..half
        ratio = float(num_levels - 1)
        self.register_buffer("scales", ratio ** -torch.arange(num_layers, dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., d] in [-1, 1] -> codes int64 [..., d, L] in [0, K)."""
        residual = z.double()
        codes = []
        for layer in range(self.num_layers):
            scale = self.scales[layer]
            digit = torch.round((residual / scale).clamp(-1.0, 1.0) * self.half)  # [..., d] in -half..half
            residual = residual - digit / self.half * scale
            codes.append(digit.long() + self.half)
        return torch.stack(codes, dim=-1)  # [..., d, L]

    @torch.no_grad()
    def teacher_forced_codes(self, z_pred: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """What an estimate `z_pred` [..., d] of the latent predicts for every layer when the layers
        before it are the true `codes` [..., d, L] (as in the main model's teacher-forced training):
        layer l's code is the digit of `z_pred - dequantize(codes[..., :l])`. Returns codes [..., d, L].

        `(teacher_forced_codes(z + noise, codes) == codes)` is the token accuracy per layer of a
        predictor whose latent error is `noise`: how precise a model must be before layer l is learnable.
        """
        previous = torch.zeros_like(z_pred, dtype=torch.float64)
        predicted = []
        for layer in range(self.num_layers):
            scale = self.scales[layer]
            digit = torch.round(((z_pred.double() - previous) / scale).clamp(-1.0, 1.0) * self.half)
            predicted.append(digit.long() + self.half)
            previous = previous + (codes[..., layer].double() - self.half) / self.half * scale
        return torch.stack(predicted, dim=-1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., d, m] (any prefix m <= L) -> z_m [..., d] float32: the sum of the m layers."""
        num_used = codes.shape[-1]
        digits = (codes.double() - self.half) / self.half  # [..., d, m] in [-1, 1]
        return (digits * self.scales[:num_used]).sum(-1).float()  # [..., d]

    def dequantize_depths(self, codes: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        """codes [B, ..., d, L], depths [B] in 1..L -> z [B, ..., d]: sample b keeps its first depths[b] layers."""
        layer_ids = torch.arange(self.num_layers, device=codes.device)
        keep_shape = (codes.shape[0],) + (1,) * (codes.dim() - 2) + (self.num_layers,)
        keep = (layer_ids < depths[:, None]).view(keep_shape)  # [B, 1.., L]
        digits = (codes.double() - self.half) / self.half
        return (digits * self.scales * keep).sum(-1).float()


class SkipMLP(nn.Module):
    """A linear map plus a Linear-GELU MLP (`num_hidden` layers of width `hidden`): x -> Wx + mlp(x).

    The linear path alone can already be (nearly) invertible, so the autoencoder starts close to a
    lossless map and the MLP learns the corrections.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, num_hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_hidden):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class ActionRFSQAE(nn.Module):
    """Action chunk autoencoder with a residual FSQ bottleneck (the phase-1 tokenizer).

    The encoder and decoder are MLPs over the whole flattened chunk (T x D in, P x d out), so a
    latent scalar can use every step: smooth chunks compress well. Actions are in normalised
    units (see `ActionNormalizer`). About 0.1M parameters at the defaults. `positions` (P, default
    T) and `group` (g, default 1) set the token layout; without them the layout is the original one,
    so configs written before they existed load unchanged.
    """

    def __init__(
        self,
        action_dim: int = 7,
        chunk_len: int = 8,
        latent_dim: int = 16,
        num_layers: int = 8,
        num_levels: int = 7,
        hidden: int = 160,
        num_hidden: int = 2,
        positions: int | None = None,
        group: int = 1,
    ) -> None:
        super().__init__()
        self.layout = TokenLayout.of(chunk_len, latent_dim, num_levels, positions, group, where="tokenizer ")
        self.action_dim = action_dim
        self.chunk_len = chunk_len
        self.latent_dim = latent_dim
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.positions = self.layout.positions
        self.group = group
        self.tokens_per_position = self.layout.tokens_per_position
        self.vocab_size = self.layout.vocab_size
        self.hidden = hidden
        self.num_hidden = num_hidden
        self.encoder = SkipMLP(chunk_len * action_dim, hidden, self.layout.latent_size, num_hidden)
        self.decoder = SkipMLP(self.layout.latent_size, hidden, chunk_len * action_dim, num_hidden)
        self.quantizer = ResidualFSQ(num_layers, num_levels)

    @property
    def config(self) -> dict[str, int]:
        """The constructor arguments: `ActionRFSQAE(**model.config)` rebuilds the architecture."""
        names = ("action_dim", "chunk_len", "latent_dim", "num_layers", "num_levels", "hidden", "num_hidden",
                 "positions", "group")
        return {name: getattr(self, name) for name in names}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_actions(self, actions: torch.Tensor) -> None:
        expected = (self.chunk_len, self.action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"actions must be [B, {expected[0]}, {expected[1]}], got {list(actions.shape)}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        expected = (self.positions, self.tokens_per_position)
        if codes.dim() != 4 or tuple(codes.shape[1:3]) != expected:
            raise ValueError(f"codes must be [B, P={expected[0]}, n={expected[1]}, m], got {list(codes.shape)}")
        if not 1 <= codes.shape[-1] <= self.num_layers:
            raise ValueError(f"codes have {codes.shape[-1]} layers, expected 1..{self.num_layers}")
        if codes.dtype.is_floating_point or codes.min() < 0 or codes.max() >= self.vocab_size:
            raise ValueError(f"codes must be integers in [0, {self.vocab_size})")

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [B, T, D] (normalised) -> z [B, P, d] in (-1, 1)."""
        self._check_actions(actions)
        batch = actions.shape[0]
        z = self.encoder(actions.reshape(batch, -1))  # [B, P*d]
        return torch.tanh(z).view(batch, self.positions, self.latent_dim)  # [B, P, d]

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, P, d] -> token codes int64 [B, P, n, L] in [0, K**g)."""
        return self.layout.join(self.quantizer.quantize(z))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Token codes [B, P, n, m] -> z_m [B, P, d]: the sum of the first m layers."""
        return self.quantizer.dequantize(self.layout.split(codes))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, P, d] -> actions [B, T, D] (normalised units)."""
        batch = z.shape[0]
        out = self.decoder(z.reshape(batch, -1))  # [B, T*D]
        return out.view(batch, self.chunk_len, self.action_dim)  # [B, T, D]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Token codes [B, P, n, m] for any prefix m = 1..L -> actions [B, T, D] (normalised units)."""
        self._check_codes(codes)
        return self.decode_latent(self.dequantize(codes))

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [B, T, D] (normalised) -> token codes int64 [B, P, n, L]."""
        return self.quantize(self.encode(actions))

    def forward(
        self,
        actions: torch.Tensor,
        num_layers: int | None = None,
        depths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """actions [B, T, D] -> (recon [B, T, D], token codes [B, P, n, L]).

        The reconstruction uses the first `num_layers` layers (all by default), or per sample the
        first `depths[b]` layers when `depths [B]` is given (quantise-dropout in training).
        Gradients pass the rounding straight through to the encoder.
        """
        z = self.encode(actions)  # [B, P, d]
        digits = self.quantizer.quantize(z)  # [B, P, d, L]
        if depths is None:
            depth = self.num_layers if num_layers is None else num_layers
            depths = torch.full((z.shape[0],), depth, dtype=torch.long, device=z.device)
        if depths.min() < 1 or depths.max() > self.num_layers:
            raise ValueError(f"prefix depths must be in 1..{self.num_layers}, got {depths.tolist()}")
        z_hard = self.quantizer.dequantize_depths(digits, depths)  # [B, P, d]
        z_q = z + (z_hard - z).detach()  # straight-through
        return self.decode_latent(z_q), self.layout.join(digits)


def sample_depths(
    batch_size: int, num_layers: int, dropout_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Quantise-dropout depths [B]: with prob `dropout_prob` uniform in 1..L, else L."""
    drop = torch.rand(batch_size, generator=generator) < dropout_prob
    random_depths = torch.randint(1, num_layers + 1, (batch_size,), generator=generator)
    return torch.where(drop, random_depths, torch.full_like(random_depths, num_layers))


class UniformBinTokenizer:
    """Baseline: each normalised scalar into `num_bins` equal bins on [low, high] (OpenVLA style).

    One token per (step, dim): T x D = 56 tokens per chunk; decodes to the bin centres, so the error
    on in-range values is at most half a bin, (high - low) / num_bins / 2.
    """

    def __init__(self, num_bins: int = 256, low: float = -1.0, high: float = 1.0) -> None:
        self.num_bins, self.low, self.high = num_bins, low, high
        self.width = (high - low) / num_bins

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """x [...] (normalised) -> int64 bins [...] in [0, num_bins)."""
        return ((x - self.low) / self.width).floor().clamp(0, self.num_bins - 1).long()

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 bins [...] -> bin centres [...] float32."""
        return self.low + (tokens.float() + 0.5) * self.width


def load_tokenizer(
    spec: str, registry: Registry | str | Path
) -> tuple[ActionRFSQAE, ActionNormalizer, Artifact]:
    """Rebuild the tokenizer of a registry artifact (`"rfsq@best"`, `"rfsq@3"`, ...), in eval mode.

    The artifact's config holds the AE's constructor args under `"model"`, its tensors the AE
    state dict, and its `stats` json the `ActionNormalizer`.
    """
    if isinstance(registry, str | Path):
        from rsd_pl.registry import Registry

        registry = Registry(registry)
    artifact = registry.resolve(spec)
    model_config = artifact.config.get("model")
    if not isinstance(model_config, dict):
        raise RsdError(f"{artifact.spec}: config has no 'model' section; is it an RFSQ tokenizer artifact?")
    try:
        model = ActionRFSQAE(**model_config)
        model.load_state_dict(artifact.load_tensors())
    except (TypeError, ValueError, RuntimeError) as error:
        raise RsdError(f"{artifact.spec} ({artifact.path}): weights do not fit its config: {error}") from error
    normalizer = ActionNormalizer.from_dict(artifact.read_json("stats"), source=f"{artifact.spec} stats")
    return model.eval(), normalizer, artifact
