"""RFSQ token heads on a VLA backbone (DESIGN.md section 3). Plain torch.

Layout appended after the prefix (causal):  [Q_1..Q_T] [B1_1..B1_P] ... [B(L-1)_1..B(L-1)_P]
(P token positions per layer block, n tokens per position, K**g codes per token: `rsd_pl.models.layout`;
the original layout has P = T and one-scalar tokens)
- `QueryBlock`: learned queries Q_t; the outputs of the T/P queries of position p predict its layer-1 tokens.
- `CodeBlockEmbedding`: Bl_p = sum over the d latent scalars of a digit embedding (one table entry per
  (layer, scalar, level)) + layer embedding + position embedding; the output at Bl_p predicts layer l+1.
- `LayerHeads`: one linear head per target layer (hidden -> n*K**g logits per position).
- `ParallelHead`: all L layers from the Q outputs in one pass.
- factored heads (both): a code's logit is the sum of its g digits' logits (one K-way table per scalar)
  plus a joint correction that starts at zero (`joint_logits`), on the first `joint_layers` layers or all.
- `L1Head`: OFT-style regression of the normalised action chunk from the Q outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsd_pl.models.layout import TokenLayout


class QueryBlock(nn.Module):
    """T learned query embeddings, broadcast over the batch: -> [B, T, H]."""

    def __init__(self, chunk_len: int, hidden_size: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(chunk_len, hidden_size) * 0.02)

    def forward(self, batch_size: int) -> Tensor:
        return self.queries.unsqueeze(0).expand(batch_size, -1, -1)  # (B, T, H)


class CodeBlockEmbedding(nn.Module):
    """Token codes of layers first..first+n-1 -> n blocks of P embeddings each: [B, P, n_tok, n] -> [B, n*P, H].

    A position's embedding sums one table entry per latent scalar (layer, scalar, digit): a token of g
    scalars is split into its g digits, so neighbouring codes share entries and the table stays
    d x K per layer whatever the layout (g = 1: one entry per token, the original table).
    """

    def __init__(self, layout: TokenLayout, num_layers: int, hidden_size: int):
        super().__init__()
        self.layout = layout
        latent_dim, self.num_levels = layout.latent_dim, layout.num_levels
        self.num_blocks = num_layers - 1  # layer L's codes are never fed back
        std = 0.02 / latent_dim**0.5  # the sum of d entries then has std ~0.02
        self.codes = nn.Parameter(torch.randn(self.num_blocks, latent_dim, layout.num_levels, hidden_size) * std)
        self.layer_embed = nn.Parameter(torch.randn(self.num_blocks, hidden_size) * 0.02)
        self.step_embed = nn.Parameter(torch.randn(layout.positions, hidden_size) * 0.02)  # one per position

    def forward(self, codes: Tensor, first_layer: int) -> Tensor:
        """token codes int64 [B, P, n_tok, n] of layers first_layer..first_layer+n-1 (1-based) -> [B, n*P, H]."""
        num_new = codes.shape[-1]
        last = first_layer + num_new - 1
        if first_layer < 1 or last > self.num_blocks:
            raise ValueError(f"code blocks exist for layers 1..{self.num_blocks}, asked {first_layer}..{last}")
        digits = self.layout.split(codes)  # (B, P, d, n)
        # sum over i of table[first_layer - 1 + j, i, digits[b, p, i, j]], as one embedding_bag over the
        # flattened (layer, scalar, level) table: one op instead of a gather and a sum (decoding calls it per step)
        batch, positions, dims, _ = digits.shape
        layer_ids = torch.arange(first_layer - 1, last, device=codes.device).view(1, 1, 1, -1)
        dim_ids = torch.arange(dims, device=codes.device).view(1, 1, -1, 1)
        flat = (layer_ids * dims + dim_ids) * self.num_levels + digits  # (B, P, d, n)
        bags = flat.permute(0, 3, 1, 2).reshape(-1, dims)  # (B*n*P, d)
        summed = F.embedding_bag(bags, self.codes.flatten(0, 2), mode="sum")  # (B*n*P, H)
        blocks = summed.view(batch, num_new, positions, -1)  # (B, n, P, H)
        blocks = blocks + self.layer_embed[first_layer - 1 : last].view(1, num_new, 1, -1)
        blocks = blocks + self.step_embed.view(1, 1, *self.step_embed.shape)
        return blocks.flatten(1, 2)  # (B, n*P, H)


def joint_logits(digit_logits: Tensor, correction: Tensor | float) -> Tensor:
    """Factored token logits: digit_logits [..., g, K] -> [..., K**g] with code c = sum_i digit_i * K**(g-1-i)
    scoring sum_i digit_logits[i, digit_i] + correction[c].

    A K**g-way softmax learnt code by code sees each code rarely (2,401 codes of 4 scalars against a few
    thousand training chunks) and memorises; the digit terms share what one scalar's level means across
    every code, as the one-scalar layout does, and the correction (zero at the start) learns how the
    scalars of a token move together (which mode), where the data shows it.
    """
    total = digit_logits[..., 0, :]
    for i in range(1, digit_logits.shape[-2]):  # most significant digit first, as TokenLayout.join
        total = (total.unsqueeze(-1) + digit_logits[..., i, :].unsqueeze(-2)).flatten(-2)
    return total + correction


def _digit_head(width: int, outputs: int, joint: nn.Module | None) -> nn.Linear:
    """The digit head of a factored head; its joint head's weights start at zero (a product of digits)."""
    if isinstance(joint, nn.Linear):
        nn.init.zeros_(joint.weight)
        nn.init.zeros_(joint.bias)
    return nn.Linear(width, outputs)


class LayerHeads(nn.Module):
    """One linear head per target layer: hidden of block (target-1) -> logits of layer target, one
    K**g-way softmax per token. The head of layer 1 reads the query outputs of a position
    (`first_input` wide: T / P query outputs concatenated); the others read one block position.
    factored (tokens of g > 1 scalars only): plus one K-way digit head per scalar (`joint_logits`), the
    joint correction kept on layers 1..joint_layers only (None: every layer; deeper layers score digits)."""

    def __init__(self, layout: TokenLayout, num_layers: int, hidden_size: int, first_input: int | None = None,
                 factored: bool = False, joint_layers: int | None = None):
        super().__init__()
        self.layout = layout
        self.tokens_per_position, self.vocab_size = layout.tokens_per_position, layout.vocab_size
        widths = [first_input or hidden_size] + [hidden_size] * (num_layers - 1)
        factored = factored and layout.group > 1
        joint = [not factored or joint_layers is None or layer < joint_layers for layer in range(num_layers)]
        self.heads = nn.ModuleList(nn.Linear(width, self.tokens_per_position * self.vocab_size) if keep
                                   else nn.Identity()  # digits only: no joint head
                                   for width, keep in zip(widths, joint, strict=True))
        self.digit_heads = None
        if factored:
            self.digit_heads = nn.ModuleList(_digit_head(width, layout.latent_dim * layout.num_levels, head)
                                             for width, head in zip(widths, self.heads, strict=True))

    def forward(self, hidden: Tensor, first_target: int) -> Tensor:
        """hidden [B, n, P, H] for targets first_target..first_target+n-1 (1-based) -> [B, n, P, n_tok, V]."""
        logits = []
        tokens = (self.tokens_per_position, self.vocab_size)
        for j in range(hidden.shape[1]):
            head = self.heads[first_target - 1 + j]
            joint = 0.0 if isinstance(head, nn.Identity) else head(hidden[:, j]).unflatten(-1, tokens)
            if self.digit_heads is not None:
                digits = self.digit_heads[first_target - 1 + j](hidden[:, j])
                digits = digits.unflatten(-1, (self.tokens_per_position, self.layout.group, self.layout.num_levels))
                joint = joint_logits(digits, joint)
            logits.append(joint)  # (B, P, n_tok, V)
        return torch.stack(logits, dim=1)


class ParallelHead(nn.Module):
    """All L layers from the query outputs of each position: [B, P, r*H] -> [B, L, P, n_tok, V]
    (factored as `LayerHeads`)."""

    def __init__(self, layout: TokenLayout, num_layers: int, input_size: int, factored: bool = False,
                 joint_layers: int | None = None):
        super().__init__()
        self.layout = layout
        self.shape = (num_layers, layout.tokens_per_position, layout.vocab_size)
        factored = factored and layout.group > 1
        self.joint_layers = num_layers if not factored or joint_layers is None else min(joint_layers, num_layers)
        self.proj = (nn.Linear(input_size, self.joint_layers * layout.tokens_per_position * layout.vocab_size)
                     if self.joint_layers else None)
        self.digit_proj = None
        if factored:
            self.digit_proj = _digit_head(input_size, num_layers * layout.latent_dim * layout.num_levels, self.proj)

    def forward(self, position_hidden: Tensor) -> Tensor:
        joint = None
        if self.proj is not None:
            joint = self.proj(position_hidden).unflatten(-1, (self.joint_layers, *self.shape[1:]))  # (B, P, J, n, V)
        if self.digit_proj is None:
            return joint.transpose(1, 2)  # (B, L, P, n_tok, V)
        digits = (*self.shape[:2], self.layout.group, self.layout.num_levels)
        logits = joint_logits(self.digit_proj(position_hidden).unflatten(-1, digits), 0.0)  # (B, P, L, n_tok, V)
        if joint is not None:
            logits = torch.cat([logits[:, :, : self.joint_layers] + joint, logits[:, :, self.joint_layers :]], 2)
        return logits.transpose(1, 2)  # (B, L, P, n_tok, V)


def group_queries(query_hidden: Tensor, positions: int) -> Tensor:
    """Query outputs [B, T, H] -> per token position [B, P, (T/P)*H]: consecutive steps concatenated."""
    return query_hidden.reshape(query_hidden.shape[0], positions, -1)


class L1Head(nn.Module):
    """OFT-style regression baseline: Q outputs [B, T, H] -> normalised actions [B, T, D]."""

    def __init__(self, hidden_size: int, action_dim: int, mlp_dim: int | None = None):
        super().__init__()
        mlp_dim = mlp_dim or hidden_size
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, mlp_dim), nn.GELU(),
                                 nn.Linear(mlp_dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, action_dim))

    def forward(self, query_hidden: Tensor) -> Tensor:
        return self.net(query_hidden)  # (B, T, D)
