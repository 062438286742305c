"""The draft model (DESIGN.md section 4): a small causal transformer over residual layers. Plain torch.

Input: the main model's Q-block hidden states through a projection (H_main -> H_draft), plus the tokens of
the layers decided so far. Sequence: [Qp_1..Qp_T][C1_1..C1_P]...[Cm_1..Cm_P] with block-causal attention
(a token sees every token of its own and earlier blocks); the output at Cl_p predicts the layer-(l+1)
tokens of position p, one K**g-way distribution per token (the main model's token layout).

The draft keeps its own KV cache, mirroring the main model's `prefill` / `extend` / `crop_cache`:
`start` projects the Q block once per chunk, each `extend` feeds only the new layer blocks, and the
speculative engine crops the cache back to the layers that survived verification. The transformer
layer is hand-written because `nn.TransformerEncoderLayer` has no KV cache; a draft step is then a
handful of small matmuls over T new tokens, much cheaper than a main-model step.
Teacher forcing (`forward`) runs the same `extend` over all blocks in one pass, so training and
decoding share one code path (tests/test_draft.py checks cached steps against it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsd_pl.errors import RsdError
from rsd_pl.models.heads import CodeBlockEmbedding, LayerHeads
from rsd_pl.models.layout import TokenLayout


@dataclass
class DraftConfig:
    main_hidden: int
    """H_main: hidden size of the main model whose Q outputs feed the draft."""
    hidden: int = 128
    """H_draft (512 at 7B scale)."""
    layers: int = 2
    heads: int = 4
    mlp: int = 512
    chunk_len: int = 8
    latent_dim: int = 16
    num_layers: int = 8
    num_levels: int = 7
    positions: int | None = None
    """P: token positions per layer block (None = chunk_len), as the main model's."""
    group: int = 1
    """g: latent scalars per token, as the main model's."""
    factored: bool = False
    """Factored token heads, as the main model's (`MainModelConfig.factored`)."""
    joint_layers: int | None = None
    """As the main model's (`MainModelConfig.joint_layers`)."""

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout.of_config(self, where="draft ")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> DraftConfig:
        try:
            return cls(**raw)
        except TypeError as error:
            raise RsdError(f"draft config: {error}") from error


@dataclass
class DraftCache:
    """Keys and values of every draft layer ([B, heads, S, head_dim] each) for the Q block and the
    first `num_blocks` layer blocks: S = T + num_blocks * P."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    num_blocks: int = 0
    pending_query: Tensor | None = None
    """The projected Q block [B, T, H_draft] until the first `extend` runs it with the first layers
    (one forward instead of two; nothing reads the Q outputs)."""


class CachedBlock(nn.Module):
    """Pre-norm transformer layer (attention + GELU MLP) that appends its keys/values to a cache."""

    def __init__(self, hidden: int, heads: int, mlp: int):
        super().__init__()
        if hidden % heads:
            raise RsdError(f"draft: hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Linear(mlp, hidden))

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None, allowed: Tensor | None) -> tuple[Tensor, tuple]:
        """x [B, N, H]; past keys/values [B, h, S, H/h]; allowed bool [N, S + N] or None (all allowed)."""
        batch, new, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, new, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, h, N, H/h]
        x = x + self.out(attended.transpose(1, 2).reshape(batch, new, hidden))
        return x + self.mlp(self.norm2(x)), (k, v)


class DraftModel(nn.Module):
    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = layout = cfg.layout
        self.chunk_len, self.num_layers = cfg.chunk_len, cfg.num_layers
        self.positions = layout.positions
        self.proj = nn.Sequential(nn.LayerNorm(cfg.main_hidden), nn.Linear(cfg.main_hidden, cfg.hidden))
        self.query_embed = nn.Parameter(torch.randn(cfg.chunk_len, cfg.hidden) * 0.02)
        self.code_embed = CodeBlockEmbedding(layout, cfg.num_layers, cfg.hidden)
        self.blocks = nn.ModuleList(CachedBlock(cfg.hidden, cfg.heads, cfg.mlp) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        # heads[j] predicts layer j+1 (1-based); heads for targets 2..L are used
        self.heads = LayerHeads(layout, cfg.num_layers, cfg.hidden, factored=cfg.factored,
                                joint_layers=cfg.joint_layers)

    def _run(self, tokens: Tensor, cache: DraftCache, block_sizes: list[int]) -> Tensor:
        """Feed new blocks of the given sizes (the Q block: T, a layer block: P) after the cached ones;
        updates the cache in place."""
        past_len = self.chunk_len + cache.num_blocks * self.positions if cache.keys else 0
        allowed = None
        if len(block_sizes) > 1:  # block-causal among the new blocks; every cached token is visible
            sizes = torch.tensor(block_sizes, device=tokens.device)
            query_block = torch.repeat_interleave(torch.arange(len(block_sizes), device=tokens.device), sizes)
            key_block = torch.cat([torch.full((past_len,), -1, device=tokens.device), query_block])
            allowed = key_block.view(1, -1) <= query_block.view(-1, 1)
        hidden, keys, values = tokens, [], []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if past_len else None
            hidden, (layer_keys, layer_values) = block(hidden, past, allowed)
            keys.append(layer_keys)
            values.append(layer_values)
        cache.keys, cache.values = keys, values
        return self.norm(hidden)

    def start(self, query_hidden: Tensor) -> DraftCache:
        """A fresh cache holding the projected Q block (query_hidden [B, T, H_main])."""
        expected = (self.chunk_len, self.cfg.main_hidden)
        if tuple(query_hidden.shape[1:]) != expected:
            raise RsdError(f"draft: query_hidden expected [B, T={expected[0]}, H={expected[1]}], "
                           f"got {list(query_hidden.shape)}")
        query = self.proj(query_hidden.to(self.query_embed.dtype)) + self.query_embed  # (B, T, Hd)
        return DraftCache(pending_query=query)

    def extend(self, codes: Tensor, first_layer: int, cache: DraftCache) -> Tensor:
        """Feed the blocks of layers first_layer..first_layer+n-1 (token codes [B, P, n_tok, n]) after the
        cached ones. Returns logits [B, n, P, n_tok, V] for layers first_layer+1..first_layer+n.
        """
        num_new = codes.shape[-1]
        if first_layer != cache.num_blocks + 1:
            raise RsdError(f"draft: the cache holds layers 1..{cache.num_blocks}, cannot feed layer {first_layer}")
        if num_new < 1 or first_layer + num_new - 1 >= self.num_layers:
            raise RsdError(f"draft: needs 1..{self.num_layers - 1} known layers, got {first_layer + num_new - 1}")
        tokens = self.code_embed(codes, first_layer)  # (B, n*P, Hd)
        if cache.pending_query is None:
            hidden = self._run(tokens, cache, [self.positions] * num_new)
        else:
            hidden = self._run(torch.cat([cache.pending_query, tokens], dim=1), cache,
                               [self.chunk_len] + [self.positions] * num_new)
            hidden, cache.pending_query = hidden[:, self.chunk_len :], None
        cache.num_blocks += num_new
        return self.heads(hidden.unflatten(1, (num_new, self.positions)), first_target=first_layer + 1)

    def crop_cache(self, cache: DraftCache, num_blocks: int) -> None:
        """Keep the Q block and the first `num_blocks` layer blocks (in place)."""
        if cache.pending_query is not None:
            raise RsdError("draft crop_cache: nothing was fed yet")
        if not 0 <= num_blocks <= cache.num_blocks:
            raise ValueError(f"draft crop_cache: cache holds {cache.num_blocks} blocks, asked to keep {num_blocks}")
        keep = self.chunk_len + num_blocks * self.positions
        cache.keys = [k[:, :, :keep] for k in cache.keys]
        cache.values = [v[:, :, :keep] for v in cache.values]
        cache.num_blocks = num_blocks

    def forward(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """Teacher forcing: token codes [B, P, n, L] -> logits of layers 2..L [B, L-1, P, n, V]."""
        return self.extend(codes[..., : self.num_layers - 1], 1, self.start(query_hidden))


def load_draft(spec: str, registry, main_spec: str | None = None) -> tuple[DraftModel, object]:
    """Rebuild a DraftModel from a registry artifact: (model in eval mode, Artifact).

    With `main_spec`, refuse a draft that was distilled from a different main artifact.
    """
    artifact = registry.resolve(spec)
    if "draft" not in artifact.config:
        raise RsdError(f"{artifact.spec}: config has no 'draft' section; is it a draft artifact?")
    if main_spec is not None:
        main_artifact = registry.resolve(main_spec)
        trained_on = artifact.lineage.get("main")
        if trained_on != main_artifact.spec:
            raise RsdError(f"draft {artifact.spec} was distilled from {trained_on!r}, "
                           f"not from {main_artifact.spec!r} ({main_spec}); train a draft for that main model")
        main_hidden = main_artifact.config.get("hidden_size")
        if main_hidden is not None and main_hidden != artifact.config["draft"]["main_hidden"]:
            raise RsdError(f"draft {artifact.spec} expects main hidden {artifact.config['draft']['main_hidden']}, "
                           f"{main_artifact.spec} has {main_hidden}")
    model = DraftModel(DraftConfig.from_dict(artifact.config["draft"]))
    tensors = artifact.load_tensors()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        hint = ""
        if any(key.startswith("transformer.layers.") for key in unexpected):
            hint = ("; it was exported by an older rsd_pl whose draft had no KV cache: retrain it "
                    "(`fit --config configs/draft_tiny.yaml`, or REDO=draft bash scripts/quickstart.sh)")
        raise RsdError(f"{artifact.spec}: weights do not match its config: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}{hint}")
    return model.eval(), artifact
