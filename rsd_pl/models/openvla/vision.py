"""OpenVLA's fused vision backbone and projector in plain torch, with timm's tensor names.

Written from the architecture (ViT blocks: pre-norm attention + GELU MLP, LayerNorm eps 1e-6,
exact-erf GELU), not from timm's code. OpenVLA stores LayerScale's `gamma` as `scale_factor`.
OpenVLA's features are the output of the second-to-last block, before the final norm, with the
cls / register tokens dropped; the last block, the final norm and SigLIP's attention-pool head
are in the weights but never run (they are built so that the checkpoint loads strictly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsd_pl.models.openvla.config import TowerSpec

LN_EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale_factor


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, dim/heads)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, spec: TowerSpec):
        super().__init__()
        dim = spec.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=LN_EPS), nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.mlp = Mlp(dim, spec.mlp_hidden)
        self.ls1 = LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPool(nn.Module):
    """SigLIP's MAP head (latent query, q, kv, proj, norm, mlp): loaded, never run by OpenVLA."""

    def __init__(self, spec: TowerSpec):
        super().__init__()
        dim = spec.embed_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, spec.mlp_hidden)


class PatchEmbed(nn.Module):
    def __init__(self, spec: TowerSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, kernel_size=spec.patch_size, stride=spec.patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (B, N, E)


class VisionTower(nn.Module):
    """One ViT; `forward` returns the patch features of block depth-2: [B, 3, S, S] -> [B, N, E]."""

    def __init__(self, spec: TowerSpec):
        super().__init__()
        self.spec = spec
        dim, patches = spec.embed_dim, spec.grid**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if spec.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, dim)) if spec.reg_tokens else None
        pos_len = patches if spec.no_embed_class else patches + spec.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, dim))
        self.patch_embed = PatchEmbed(spec)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn_pool = AttentionPool(spec) if spec.attn_pool else None

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed(pixels)  # (B, N, E)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.spec.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)  # (B, prefix + N, E)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        for block in self.blocks[: self.spec.depth - 1]:  # through block index depth-2
            x = block(x)
        return x[:, self.spec.num_prefix_tokens :]  # (B, N, E), prefix tokens dropped, no final norm


class FusedVisionBackbone(nn.Module):
    """DINOv2 (`featurizer`) and SigLIP (`fused_featurizer`) on the same image, features concatenated."""

    def __init__(self, towers: tuple[TowerSpec, TowerSpec]):
        super().__init__()
        self.featurizer, self.fused_featurizer = VisionTower(towers[0]), VisionTower(towers[1])

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values [B, V, 6, S, S] (per camera: DINOv2 channels, then SigLIP) -> [B, V * N, E1 + E2]."""
        batch, cams = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)  # (B*V, 6, S, S)
        patches = torch.cat([self.featurizer(flat[:, :3]), self.fused_featurizer(flat[:, 3:])], dim=-1)
        return patches.unflatten(0, (batch, cams)).flatten(1, 2)  # (B, V*N, E1+E2)


class FusedProjector(nn.Module):
    """OpenVLA's `fused-gelu-mlp` projector: fc1 (E -> 4E), GELU, fc2 (-> H), GELU, fc3 (H -> H)."""

    def __init__(self, vision_dim: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, hidden_size)
        self.fc3 = nn.Linear(hidden_size, hidden_size)

    def forward(self, patches: Tensor) -> Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(patches)))))
