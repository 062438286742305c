"""`build_backbone`: the one place that picks a backbone implementation from `BackboneConfig.kind`.

It imports both implementations (`rsd_pl.models.backbone.TinyVLM`, `rsd_pl.models.openvla.backbone.
OpenVLABackbone`, the latter lazily: it pulls in the OpenVLA checkpoint loader); neither backbone module
imports this one, so `models/` has no import cycle.
"""

from __future__ import annotations

import torch
from torch import nn

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig, TinyVLM


def build_backbone(cfg: BackboneConfig, block_len: int = 8, query_len: int | None = None) -> nn.Module:
    """The backbone of cfg.kind; after the prefix come a query block of `query_len` (T, default
    `block_len`) and layer blocks of `block_len` (P) tokens (the openvla backbone attends them block-causally)."""
    cfg.validate()
    if cfg.kind == "tiny":
        return TinyVLM(cfg)
    from rsd_pl.models.openvla.backbone import OpenVLABackbone

    dtype = getattr(torch, cfg.torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise RsdError(f"backbone.torch_dtype={cfg.torch_dtype!r} is not a torch dtype")
    return OpenVLABackbone(cfg, dtype, block_len, query_len=query_len)
