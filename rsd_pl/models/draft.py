"""The draft model (DESIGN.md section 4): a small causal transformer over residual layers. Plain torch.

Input: the main model's Q-block hidden states through a projection (H_main -> H_draft), plus the codes of
the layers decided so far. Sequence: [Qp_1..Qp_T][C1_1..C1_T]...[Cm_1..Cm_T] with block-causal attention
(a token sees every token of its own and earlier blocks); the output at Cl_t predicts layer l+1 of step t.

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
    first `num_blocks` layer blocks: S = (1 + num_blocks) * T."""

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
        self.chunk_len, self.num_layers = cfg.chunk_len, cfg.num_layers
        self.proj = nn.Sequential(nn.LayerNorm(cfg.main_hidden), nn.Linear(cfg.main_hidden, cfg.hidden))
        self.query_embed = nn.Parameter(torch.randn(cfg.chunk_len, cfg.hidden) * 0.02)
        self.code_embed = CodeBlockEmbedding(cfg.chunk_len, cfg.latent_dim, cfg.num_layers, cfg.num_levels,
                                             cfg.hidden)
        self.blocks = nn.ModuleList(CachedBlock(cfg.hidden, cfg.heads, cfg.mlp) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        # heads[j] predicts layer j+1 (1-based); heads for targets 2..L are used
        self.heads = LayerHeads(cfg.latent_dim, cfg.num_layers, cfg.num_levels, cfg.hidden)

    def _run(self, tokens: Tensor, cache: DraftCache, new_blocks: int) -> Tensor:
        """Feed `new_blocks` blocks of T tokens after the cached ones; updates the cache in place."""
        past_len = (cache.num_blocks + 1) * self.chunk_len if cache.keys else 0
        allowed = None
        if new_blocks > 1:  # block-causal among the new blocks; every cached token is visible
            query_block = torch.arange(new_blocks * self.chunk_len, device=tokens.device) // self.chunk_len
            key_block = torch.arange(past_len + new_blocks * self.chunk_len, device=tokens.device)
            key_block = (key_block - past_len).div(self.chunk_len, rounding_mode="floor")
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
        """Feed the blocks of layers first_layer..first_layer+n-1 (codes [B, T, d, n]) after the cached ones.

        Returns logits [B, n, T, d, K] for layers first_layer+1..first_layer+n.
        """
        num_new = codes.shape[-1]
        if first_layer != cache.num_blocks + 1:
            raise RsdError(f"draft: the cache holds layers 1..{cache.num_blocks}, cannot feed layer {first_layer}")
        if num_new < 1 or first_layer + num_new - 1 >= self.num_layers:
            raise RsdError(f"draft: needs 1..{self.num_layers - 1} known layers, got {first_layer + num_new - 1}")
        tokens = self.code_embed(codes, first_layer)  # (B, n*T, Hd)
        if cache.pending_query is None:
            hidden = self._run(tokens, cache, new_blocks=num_new)
        else:
            hidden = self._run(torch.cat([cache.pending_query, tokens], dim=1), cache, new_blocks=1 + num_new)
            hidden, cache.pending_query = hidden[:, self.chunk_len :], None
        cache.num_blocks += num_new
        return self.heads(hidden.unflatten(1, (num_new, self.chunk_len)), first_target=first_layer + 1)

    def crop_cache(self, cache: DraftCache, num_blocks: int) -> None:
        """Keep the Q block and the first `num_blocks` layer blocks (in place)."""
        if cache.pending_query is not None:
            raise RsdError("draft crop_cache: nothing was fed yet")
        if not 0 <= num_blocks <= cache.num_blocks:
            raise ValueError(f"draft crop_cache: cache holds {cache.num_blocks} blocks, asked to keep {num_blocks}")
        keep = (num_blocks + 1) * self.chunk_len
        cache.keys = [k[:, :, :keep] for k in cache.keys]
        cache.values = [v[:, :, :keep] for v in cache.values]
        cache.num_blocks = num_blocks

    def forward(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """Teacher forcing: codes [B, T, d, L] -> logits of layers 2..L [B, L-1, T, d, K]."""
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
