"""The main model: VLA backbone + RFSQ token heads + L1 baseline (DESIGN.md section 3, docs/contracts.md).

Sequence: [prefix][Q_1..Q_T][B1_1..B1_T]...[B(L-1)_1..B(L-1)_T]: causal on the tiny backbone; on the
openvla backbone the prefix is bidirectional (as OFT trained it) and the blocks block-causal. The output at Q_t predicts
layer-1 codes of step t; the output at Bl_t predicts layer l+1 codes of step t. Training is one
teacher-forced pass; decoding is `prefill` then `extend` with the backbone's KV cache, and both give
the same logits (tests/test_main_model.py checks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.factory import build_backbone
from rsd_pl.models.heads import CodeBlockEmbedding, L1Head, LayerHeads, ParallelHead, QueryBlock


@dataclass
class MainModelConfig:
    """Shapes of the action tokens (must match the tokenizer) and the backbone."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    chunk_len: int = 8
    """T: steps per action chunk."""
    action_dim: int = 7
    """D: action dims."""
    latent_dim: int = 16
    """d: RFSQ latent dims per step."""
    num_layers: int = 8
    """L: residual layers predicted."""
    num_levels: int = 7
    """K: levels per scalar."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> MainModelConfig:
        raw = dict(raw)
        backbone = raw.pop("backbone", {})
        try:
            backbone_cfg = backbone if isinstance(backbone, BackboneConfig) else BackboneConfig(**backbone)
            return cls(backbone=backbone_cfg, **raw)
        except TypeError as error:
            raise RsdError(f"main model config: {error}") from error


@dataclass
class MainOutput:
    layer_logits: Tensor  # [B, L, T, d, K]  layer l from block l-1, layer 1 from Q
    parallel_logits: Tensor  # [B, L, T, d, K]  all layers from the Q outputs
    l1_actions: Tensor  # [B, T, D]  normalised
    query_hidden: Tensor  # [B, T, H]


@dataclass
class Prefill:
    query_hidden: Tensor  # [B, T, H]
    layer1_logits: Tensor  # [B, T, d, K]
    cache: DynamicCache
    cache_len: int  # tokens in the cache: prefix + Q block


class MainModel(nn.Module):
    """Backbone + query block + code-block embeddings + AR layer heads + parallel head + L1 head."""

    def __init__(self, cfg: MainModelConfig, backbone: nn.Module | None = None):
        """backbone: an already built backbone for cfg.backbone (default: build it from the config)."""
        super().__init__()
        self.cfg = cfg
        self.chunk_len, self.latent_dim = cfg.chunk_len, cfg.latent_dim
        self.num_layers, self.num_levels = cfg.num_layers, cfg.num_levels
        if cfg.num_layers < 2:
            raise RsdError(f"num_layers={cfg.num_layers}: need at least 2 residual layers")
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone, block_len=cfg.chunk_len)
        hidden = self.hidden_size = self.backbone.hidden_size
        self.queries = QueryBlock(cfg.chunk_len, hidden)
        self.code_embed = CodeBlockEmbedding(cfg.chunk_len, cfg.latent_dim, cfg.num_layers, cfg.num_levels, hidden)
        self.layer_heads = LayerHeads(cfg.latent_dim, cfg.num_layers, cfg.num_levels, hidden)
        self.parallel_head = ParallelHead(cfg.latent_dim, cfg.num_layers, cfg.num_levels, hidden)
        self.l1_head = L1Head(hidden, cfg.action_dim)

    def _check_codes(self, codes: Tensor, layers: int) -> None:
        expected = (self.chunk_len, self.latent_dim, layers)
        if tuple(codes.shape[1:]) != expected:
            raise RsdError(f"codes: expected [B, T={expected[0]}, d={expected[1]}, layers={layers}], "
                           f"got {list(codes.shape)}")

    def _head_dtype(self, hidden: Tensor) -> Tensor:
        return hidden.to(self.queries.queries.dtype)

    def forward(self, batch: dict, codes: Tensor) -> MainOutput:
        """Teacher forcing in one pass. codes int64 [B, T, d, L] (only layers 1..L-1 are fed)."""
        self._check_codes(codes, self.num_layers)
        prefix = self.backbone.embed_prefix(batch)  # (B, P, H)
        batch_size, prefix_len, steps = prefix.shape[0], prefix.shape[1], self.chunk_len
        blocks = self.code_embed(codes[..., : self.num_layers - 1], first_layer=1)  # (B, (L-1)*T, H)
        embeds = torch.cat([prefix, self.queries(batch_size).to(prefix.dtype), blocks.to(prefix.dtype)], 1)
        hidden, _ = self.backbone.run(embeds, cache=None, use_cache=False)  # (B, P + L*T, H)
        hidden = self._head_dtype(hidden[:, prefix_len:]).unflatten(1, (self.num_layers, steps))  # (B, L, T, H)
        query_hidden = hidden[:, 0]  # (B, T, H)
        return MainOutput(
            layer_logits=self.layer_heads(hidden, first_target=1),  # (B, L, T, d, K)
            parallel_logits=self.parallel_head(query_hidden),
            l1_actions=self.l1_head(query_hidden),
            query_hidden=query_hidden,
        )

    @torch.no_grad()
    def prefill(self, batch: dict) -> Prefill:
        """Prefix + Q block into a fresh KV cache; layer-1 logits from the Q outputs."""
        prefix = self.backbone.embed_prefix(batch)  # (B, P, H)
        embeds = torch.cat([prefix, self.queries(prefix.shape[0]).to(prefix.dtype)], dim=1)  # (B, P+T, H)
        hidden, cache = self.backbone.run(embeds, cache=None, use_cache=True)
        query_hidden = self._head_dtype(hidden[:, -self.chunk_len :])  # (B, T, H)
        layer1 = self.layer_heads(query_hidden.unsqueeze(1), first_target=1)[:, 0]  # (B, T, d, K)
        return Prefill(query_hidden=query_hidden, layer1_logits=layer1, cache=cache, cache_len=embeds.shape[1])

    @torch.no_grad()
    def extend(self, codes: Tensor, first_layer: int, cache: DynamicCache) -> Tensor:
        """Feed blocks of layers first_layer..first_layer+n-1 (codes [B, T, d, n]); append them to the cache.

        Returns logits [B, n, T, d, K] for layers first_layer+1..first_layer+n.
        """
        self._check_codes(codes, codes.shape[-1])
        blocks = self.code_embed(codes, first_layer)  # (B, n*T, H)
        hidden, _ = self.backbone.run(blocks.to(self.backbone.dtype), cache=cache, use_cache=True)
        hidden = self._head_dtype(hidden).unflatten(1, (codes.shape[-1], self.chunk_len))  # (B, n, T, H)
        return self.layer_heads(hidden, first_target=first_layer + 1)

    def parallel_logits(self, query_hidden: Tensor) -> Tensor:
        """[B, T, H] -> [B, L, T, d, K]."""
        return self.parallel_head(query_hidden)

    def l1_actions(self, query_hidden: Tensor) -> Tensor:
        """[B, T, H] -> normalised actions [B, T, D]."""
        return self.l1_head(query_hidden)

    def crop_cache(self, cache: DynamicCache, prefill_len: int, num_blocks: int) -> None:
        """Keep prefix + Q and the first num_blocks layer blocks (in place)."""
        keep = prefill_len + num_blocks * self.chunk_len
        excess = cache.get_seq_length() - keep
        if excess < 0:
            raise ValueError(f"crop_cache: cache holds {cache.get_seq_length()} tokens, asked to keep {keep}")
        cache.crop(-excess)  # transformers 5: a negative count of tokens to remove

    def export_tensors(self) -> dict[str, Tensor]:
        """Weights for the registry: everything for `tiny`; for `openvla` only what training changed
        (LoRA, our projectors and heads): the frozen base weights are re-read from backbone.path."""
        state = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        if self.cfg.backbone.kind == "openvla":
            state = {k: v for k, v in state.items() if "lora_" in k or not k.startswith("backbone.vla.")}
        return state

    def load_exported(self, tensors: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if self.cfg.backbone.kind == "openvla":
            missing = [k for k in missing if "lora_" in k or not k.startswith("backbone.vla.")]
        if missing or unexpected:
            raise RsdError(f"main model weights do not match the config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def load_main(spec: str, registry) -> tuple[MainModel, object]:
    """Rebuild a MainModel from a registry artifact alone (config + safetensors): (model in eval mode, Artifact)."""
    artifact = registry.resolve(spec)
    if "model" not in artifact.config:
        raise RsdError(f"{artifact.spec}: config has no 'model' section; is it a main-model artifact?")
    model = MainModel(MainModelConfig.from_dict(artifact.config["model"]))
    model.load_exported(artifact.load_tensors())
    return model.eval(), artifact
