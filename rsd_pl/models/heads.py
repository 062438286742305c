"""RFSQ token heads on a VLA backbone (DESIGN.md section 3). Plain torch.

Layout appended after the prefix (causal):  [Q_1..Q_T] [B1_1..B1_T] ... [B(L-1)_1..B(L-1)_T]
- `QueryBlock`: learned queries Q_t; the output at Q_t predicts layer-1 codes of step t.
- `CodeBlockEmbedding`: Bl_t = sum over the d latent dims of a code embedding (one table entry per
  (layer, dim, level)) + layer embedding + step embedding; the output at Bl_t predicts layer l+1.
- `LayerHeads`: one linear head per target layer (hidden -> d*K logits per step).
- `ParallelHead`: all L layers from the Q outputs in one pass.
- `L1Head`: OFT-style regression of the normalised action chunk from the Q outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QueryBlock(nn.Module):
    """T learned query embeddings, broadcast over the batch: -> [B, T, H]."""

    def __init__(self, chunk_len: int, hidden_size: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(chunk_len, hidden_size) * 0.02)

    def forward(self, batch_size: int) -> Tensor:
        return self.queries.unsqueeze(0).expand(batch_size, -1, -1)  # (B, T, H)


class CodeBlockEmbedding(nn.Module):
    """Codes of layers first..first+n-1 -> n blocks of T embeddings each: [B, T, d, n] -> [B, n*T, H]."""

    def __init__(self, chunk_len: int, latent_dim: int, num_layers: int, num_levels: int, hidden_size: int):
        super().__init__()
        self.latent_dim, self.num_levels = latent_dim, num_levels
        self.num_blocks = num_layers - 1  # layer L's codes are never fed back
        std = 0.02 / latent_dim**0.5  # the sum of d entries then has std ~0.02
        self.codes = nn.Parameter(torch.randn(self.num_blocks, latent_dim, num_levels, hidden_size) * std)
        self.layer_embed = nn.Parameter(torch.randn(self.num_blocks, hidden_size) * 0.02)
        self.step_embed = nn.Parameter(torch.randn(chunk_len, hidden_size) * 0.02)

    def forward(self, codes: Tensor, first_layer: int) -> Tensor:
        """codes int64 [B, T, d, n] of layers first_layer..first_layer+n-1 (1-based) -> [B, n*T, H]."""
        num_new = codes.shape[-1]
        last = first_layer + num_new - 1
        if first_layer < 1 or last > self.num_blocks:
            raise ValueError(f"code blocks exist for layers 1..{self.num_blocks}, asked {first_layer}..{last}")
        # sum over i of table[first_layer - 1 + j, i, codes[b, t, i, j]], as one embedding_bag over the
        # flattened (layer, dim, level) table: one op instead of a gather and a sum (decoding calls it per step)
        batch, steps, dims, _ = codes.shape
        layer_ids = torch.arange(first_layer - 1, last, device=codes.device).view(1, 1, 1, -1)
        dim_ids = torch.arange(dims, device=codes.device).view(1, 1, -1, 1)
        flat = (layer_ids * dims + dim_ids) * self.num_levels + codes  # (B, T, d, n)
        bags = flat.permute(0, 3, 1, 2).reshape(-1, dims)  # (B*n*T, d)
        summed = F.embedding_bag(bags, self.codes.flatten(0, 2), mode="sum")  # (B*n*T, H)
        blocks = summed.view(batch, num_new, steps, -1)  # (B, n, T, H)
        blocks = blocks + self.layer_embed[first_layer - 1 : last].view(1, num_new, 1, -1)
        blocks = blocks + self.step_embed.view(1, 1, *self.step_embed.shape)
        return blocks.flatten(1, 2)  # (B, n*T, H)


class LayerHeads(nn.Module):
    """One linear head per target layer: hidden of block (target-1) -> logits of layer target."""

    def __init__(self, latent_dim: int, num_layers: int, num_levels: int, hidden_size: int):
        super().__init__()
        self.latent_dim, self.num_levels = latent_dim, num_levels
        self.heads = nn.ModuleList(nn.Linear(hidden_size, latent_dim * num_levels) for _ in range(num_layers))

    def forward(self, hidden: Tensor, first_target: int) -> Tensor:
        """hidden [B, n, T, H] for targets first_target..first_target+n-1 (1-based) -> [B, n, T, d, K]."""
        logits = [self.heads[first_target - 1 + j](hidden[:, j]) for j in range(hidden.shape[1])]  # n x (B, T, d*K)
        return torch.stack(logits, dim=1).unflatten(-1, (self.latent_dim, self.num_levels))  # (B, n, T, d, K)


class ParallelHead(nn.Module):
    """All L layers from the Q outputs: [B, T, H] -> [B, L, T, d, K]."""

    def __init__(self, latent_dim: int, num_layers: int, num_levels: int, hidden_size: int):
        super().__init__()
        self.shape = (num_layers, latent_dim, num_levels)
        self.proj = nn.Linear(hidden_size, num_layers * latent_dim * num_levels)

    def forward(self, query_hidden: Tensor) -> Tensor:
        logits = self.proj(query_hidden).unflatten(-1, self.shape)  # (B, T, L, d, K)
        return logits.transpose(1, 2)  # (B, L, T, d, K)


class L1Head(nn.Module):
    """OFT-style regression baseline: Q outputs [B, T, H] -> normalised actions [B, T, D]."""

    def __init__(self, hidden_size: int, action_dim: int, mlp_dim: int | None = None):
        super().__init__()
        mlp_dim = mlp_dim or hidden_size
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, mlp_dim), nn.GELU(),
                                 nn.Linear(mlp_dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, action_dim))

    def forward(self, query_hidden: Tensor) -> Tensor:
        return self.net(query_hidden)  # (B, T, D)
