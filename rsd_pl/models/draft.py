"""The draft model (DESIGN.md section 4): a small causal transformer over residual layers. Plain torch.

Input: the main model's Q-block hidden states through a projection (H_main -> H_draft), plus the codes of
the layers decided so far. Sequence: [Qp_1..Qp_T][C1_1..C1_T]...[Cm_1..Cm_T] with block-causal attention
(a token sees every token of its own and earlier blocks); the output at Cl_t predicts layer l+1 of step t.
Because attention is block-causal, `next_layer_logits` on m layers equals block m of the teacher-forced
`forward` (tests/test_draft.py checks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
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


def block_causal_mask(num_blocks: int, block_len: int, device: torch.device) -> Tensor:
    """bool [N, N], True where attention is NOT allowed (key block after query block)."""
    block = torch.arange(num_blocks * block_len, device=device) // block_len
    return block.view(1, -1) > block.view(-1, 1)


class DraftModel(nn.Module):
    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.cfg = cfg
        self.chunk_len, self.num_layers = cfg.chunk_len, cfg.num_layers
        self.proj = nn.Sequential(nn.LayerNorm(cfg.main_hidden), nn.Linear(cfg.main_hidden, cfg.hidden))
        self.query_embed = nn.Parameter(torch.randn(cfg.chunk_len, cfg.hidden) * 0.02)
        self.code_embed = CodeBlockEmbedding(cfg.chunk_len, cfg.latent_dim, cfg.num_layers, cfg.num_levels,
                                             cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.hidden),
                                                 enable_nested_tensor=False)
        # heads[j] predicts layer j+1 (1-based); heads for targets 2..L are used
        self.heads = LayerHeads(cfg.latent_dim, cfg.num_layers, cfg.num_levels, cfg.hidden)

    def _encode(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """query_hidden [B, T, H_main], codes [B, T, d, m] -> hidden of the code blocks [B, m, T, H_draft]."""
        expected = (self.chunk_len, self.cfg.main_hidden)
        if tuple(query_hidden.shape[1:]) != expected:
            raise RsdError(f"draft: query_hidden expected [B, T={expected[0]}, H={expected[1]}], "
                           f"got {list(query_hidden.shape)}")
        num_known = codes.shape[-1]
        if not 1 <= num_known < self.num_layers:
            raise RsdError(f"draft: needs 1..{self.num_layers - 1} known layers, got {num_known}")
        query = self.proj(query_hidden.to(self.query_embed.dtype)) + self.query_embed  # (B, T, Hd)
        tokens = torch.cat([query, self.code_embed(codes, first_layer=1)], dim=1)  # (B, (m+1)*T, Hd)
        mask = block_causal_mask(num_known + 1, self.chunk_len, tokens.device)
        hidden = self.transformer(tokens, mask=mask)  # (B, (m+1)*T, Hd)
        return hidden[:, self.chunk_len :].unflatten(1, (num_known, self.chunk_len))  # (B, m, T, Hd)

    def forward(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """Teacher forcing: codes [B, T, d, L] -> logits of layers 2..L [B, L-1, T, d, K]."""
        hidden = self._encode(query_hidden, codes[..., : self.num_layers - 1])
        return self.heads(hidden, first_target=2)

    def next_layer_logits(self, query_hidden: Tensor, codes: Tensor) -> Tensor:
        """One draft forward: codes of layers 1..m [B, T, d, m] -> logits of layer m+1 [B, T, d, K]."""
        hidden = self._encode(query_hidden, codes)
        return self.heads(hidden[:, -1:], first_target=codes.shape[-1] + 1)[:, 0]


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
        raise RsdError(f"{artifact.spec}: weights do not match its config: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    return model.eval(), artifact
