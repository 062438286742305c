"""The main model: VLA backbone + RFSQ token heads + L1 baseline (DESIGN.md section 3, docs/contracts.md).

Sequence: [prefix][Q_1..Q_T][B1_1..B1_P]...[B(L-1)_1..B(L-1)_P]: causal on the tiny backbone; on the
openvla backbone the prefix is bidirectional (as OFT trained it) and the blocks block-causal. A layer is
P positions x n tokens of K**g codes (the token layout, `rsd_pl.models.layout`; originally P = T, n = d,
g = 1). The outputs of the T/P queries of position p predict its layer-1 tokens; the output at Bl_p
predicts its layer l+1 tokens. Training is one teacher-forced pass; decoding is `prefill` then `extend`
with the backbone's KV cache, and both give the same logits (tests/test_main_model.py checks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.factory import build_backbone
from rsd_pl.models.heads import CodeBlockEmbedding, L1Head, LayerHeads, ParallelHead, QueryBlock, group_queries
from rsd_pl.models.layout import TokenLayout


@dataclass
class MainModelConfig:
    """Shapes of the action tokens (must match the tokenizer) and the backbone."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    chunk_len: int = 8
    """T: steps per action chunk."""
    action_dim: int = 7
    """D: action dims."""
    latent_dim: int = 16
    """d: RFSQ latent scalars per token position."""
    num_layers: int = 8
    """L: residual layers predicted."""
    num_levels: int = 7
    """K: levels per scalar."""
    positions: int | None = None
    """P: token positions per layer block (divides T; None = T, one per step)."""
    group: int = 1
    """g: latent scalars per token (a token is one of K**g codes)."""
    factored: bool = False
    """Tokens of g > 1 scalars: a code's logit is the sum of per-scalar digit logits plus a joint correction
    (`heads.joint_logits`) instead of one free logit per code."""
    joint_layers: int | None = None
    """Factored heads: layers 1..joint_layers keep the joint correction, deeper layers score their digits
    independently (None: every layer)."""

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout.of_config(self, where="model.network.")

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
    layer_logits: Tensor  # [B, L, P, n, V]  layer l from block l-1, layer 1 from Q (V = K**g)
    parallel_logits: Tensor  # [B, L, P, n, V]  all layers from the Q outputs
    l1_actions: Tensor  # [B, T, D]  normalised
    query_hidden: Tensor  # [B, T, H]


@dataclass
class Prefill:
    query_hidden: Tensor  # [B, T, H]
    layer1_logits: Tensor  # [B, P, n, V]
    cache: DynamicCache
    cache_len: int  # tokens in the cache: prefix + Q block


class MainModel(nn.Module):
    """Backbone + query block + code-block embeddings + AR layer heads + parallel head + L1 head."""

    def __init__(self, cfg: MainModelConfig, backbone: nn.Module | None = None):
        """backbone: an already built backbone for cfg.backbone (default: build it from the config)."""
        super().__init__()
        self.cfg = cfg
        self.layout = layout = cfg.layout
        self.chunk_len, self.latent_dim = cfg.chunk_len, cfg.latent_dim
        self.num_layers, self.num_levels = cfg.num_layers, cfg.num_levels
        self.positions, self.group = layout.positions, layout.group
        self.tokens_per_position, self.vocab_size = layout.tokens_per_position, layout.vocab_size
        if cfg.num_layers < 2:
            raise RsdError(f"num_layers={cfg.num_layers}: need at least 2 residual layers")
        self.backbone = backbone if backbone is not None else build_backbone(
            cfg.backbone, block_len=layout.positions, query_len=cfg.chunk_len)
        hidden = self.hidden_size = self.backbone.hidden_size
        grouped = hidden * layout.queries_per_position  # what a position's layer-1 and parallel heads read
        self.queries = QueryBlock(cfg.chunk_len, hidden)
        self.code_embed = CodeBlockEmbedding(layout, cfg.num_layers, hidden)
        heads = dict(factored=cfg.factored, joint_layers=cfg.joint_layers)
        self.layer_heads = LayerHeads(layout, cfg.num_layers, hidden, first_input=grouped, **heads)
        self.parallel_head = ParallelHead(layout, cfg.num_layers, grouped, **heads)
        self.l1_head = L1Head(hidden, cfg.action_dim)

    def _check_codes(self, codes: Tensor, layers: int) -> None:
        expected = (self.positions, self.tokens_per_position, layers)
        if tuple(codes.shape[1:]) != expected:
            raise RsdError(f"codes: expected [B, P={expected[0]}, n={expected[1]}, layers={layers}], "
                           f"got {list(codes.shape)}")

    def _head_dtype(self, hidden: Tensor) -> Tensor:
        return hidden.to(self.queries.queries.dtype)

    def forward(self, batch: dict, codes: Tensor) -> MainOutput:
        """Teacher forcing in one pass. codes int64 [B, P, n, L] (only layers 1..L-1 are fed)."""
        self._check_codes(codes, self.num_layers)
        prefix = self.backbone.embed_prefix(batch)  # (B, S, H)
        batch_size, prefix_len, steps = prefix.shape[0], prefix.shape[1], self.chunk_len
        blocks = self.code_embed(codes[..., : self.num_layers - 1], first_layer=1)  # (B, (L-1)*P, H)
        embeds = torch.cat([prefix, self.queries(batch_size).to(prefix.dtype), blocks.to(prefix.dtype)], 1)
        hidden, _ = self.backbone.run(embeds, cache=None, use_cache=False)  # (B, S + T + (L-1)*P, H)
        hidden = self._head_dtype(hidden[:, prefix_len:])
        query_hidden = hidden[:, :steps]  # (B, T, H)
        blocks_hidden = hidden[:, steps:].unflatten(1, (self.num_layers - 1, self.positions))  # (B, L-1, P, H)
        layer1 = self._layer1_logits(query_hidden)  # (B, 1, P, n, V)
        return MainOutput(
            layer_logits=torch.cat([layer1, self.layer_heads(blocks_hidden, first_target=2)], 1),  # (B, L, P, n, V)
            parallel_logits=self.parallel_logits(query_hidden),
            l1_actions=self.l1_head(query_hidden),
            query_hidden=query_hidden,
        )

    @torch.no_grad()
    def prefill(self, batch: dict) -> Prefill:
        """Prefix + Q block into a fresh KV cache; layer-1 logits from the Q outputs."""
        prefix = self.backbone.embed_prefix(batch)  # (B, S, H)
        embeds = torch.cat([prefix, self.queries(prefix.shape[0]).to(prefix.dtype)], dim=1)  # (B, S+T, H)
        hidden, cache = self.backbone.run(embeds, cache=None, use_cache=True)
        query_hidden = self._head_dtype(hidden[:, -self.chunk_len :])  # (B, T, H)
        layer1 = self._layer1_logits(query_hidden)[:, 0]  # (B, P, n, V)
        return Prefill(query_hidden=query_hidden, layer1_logits=layer1, cache=cache, cache_len=embeds.shape[1])

    def _layer1_logits(self, query_hidden: Tensor) -> Tensor:
        """[B, T, H] -> layer-1 logits [B, 1, P, n, V] from each position's T/P query outputs."""
        return self.layer_heads(group_queries(query_hidden, self.positions).unsqueeze(1), first_target=1)

    @torch.no_grad()
    def extend(self, codes: Tensor, first_layer: int, cache: DynamicCache) -> Tensor:
        """Feed blocks of layers first_layer..first_layer+m-1 (token codes [B, P, n, m]); append them to the cache.

        Returns logits [B, m, P, n, V] for layers first_layer+1..first_layer+m.
        """
        self._check_codes(codes, codes.shape[-1])
        blocks = self.code_embed(codes, first_layer)  # (B, m*P, H)
        hidden, _ = self.backbone.run(blocks.to(self.backbone.dtype), cache=cache, use_cache=True)
        hidden = self._head_dtype(hidden).unflatten(1, (codes.shape[-1], self.positions))  # (B, m, P, H)
        return self.layer_heads(hidden, first_target=first_layer + 1)

    def parallel_logits(self, query_hidden: Tensor) -> Tensor:
        """[B, T, H] -> [B, L, P, n, V]."""
        return self.parallel_head(group_queries(query_hidden, self.positions))

    def l1_actions(self, query_hidden: Tensor) -> Tensor:
        """[B, T, H] -> normalised actions [B, T, D]."""
        return self.l1_head(query_hidden)

    def crop_cache(self, cache: DynamicCache, prefill_len: int, num_blocks: int) -> None:
        """Keep prefix + Q and the first num_blocks layer blocks (in place)."""
        keep = prefill_len + num_blocks * self.positions
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


def token_losses(out: MainOutput, codes: Tensor, actions: Tensor, group: int = 1) -> dict[str, Tensor]:
    """The main model's training losses: cross-entropy of the AR layer heads and of the parallel head over
    the K**g codes of every token (codes [B, P, n, L], teacher forced), and L1 of the regression head.

    The cross-entropies are per latent scalar (a token's divided by its g scalars), so the weights of the
    token and L1 losses mean the same in every layout: a token of 4 scalars carries about 4 times the
    nats of a one-scalar token, and unscaled it outweighed the L1 head 4 to 1.
    """
    vocab = out.layer_logits.shape[-1]
    target = codes.permute(0, 3, 1, 2).reshape(-1)  # (B*L*P*n,) in the logits' order
    return {"ce_ar": F.cross_entropy(out.layer_logits.reshape(-1, vocab), target) / group,
            "ce_parallel": F.cross_entropy(out.parallel_logits.reshape(-1, vocab), target) / group,
            "l1": F.l1_loss(out.l1_actions, actions)}


def load_main(spec: str, registry) -> tuple[MainModel, object]:
    """Rebuild a MainModel from a registry artifact alone (config + safetensors): (model in eval mode, Artifact)."""
    artifact = registry.resolve(spec)
    if "model" not in artifact.config:
        raise RsdError(f"{artifact.spec}: config has no 'model' section; is it a main-model artifact?")
    model = MainModel(MainModelConfig.from_dict(artifact.config["model"]))
    model.load_exported(artifact.load_tensors())
    return model.eval(), artifact
