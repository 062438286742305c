"""What an OpenVLA-OFT checkpoint directory provides, loaded once and shared by its consumers.

`OpenVLAParts` = the native network, the processor's per-tower normalisation, the tokenizer, OFT's
dataset statistics, proprio projector and (for the `oft` mode) L1 action head. The RSD backbone
(`OpenVLABackbone`) and the `oft` baseline (`OFTPolicyModel`) are both built from parts, so a
benchmark can time them on one copy of the 7B weights. `random_openvla_parts` builds the same
network at its real size with random weights, for latency and memory checks only (loudly labelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsd_pl.models.openvla.config import KNOWN_TOWERS, OpenVLASpec
from rsd_pl.models.openvla.model import OpenVLA, TowerNormalize, load_openvla, load_tokenizer
from rsd_pl.models.openvla.oft import (
    L1ActionHead,
    OFTPolicyModel,
    OFTProprioProjector,
    OFTStats,
    find_component,
    load_component,
)
from rsd_pl.models.openvla.preprocess import load_tower_normalization

# OpenVLA-OFT's processor values (DINOv2's ImageNet mean/std as stored, rounded to bf16; SigLIP 0.5 / 0.5)
OFT_NORMALIZATION = [((0.484375, 0.455078125, 0.40625), (0.228515625, 0.2236328125, 0.224609375)),
                     ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]


@dataclass
class OpenVLAParts:
    vla: OpenVLA
    normalization: list
    tokenizer: Any
    stats: OFTStats
    proprio: OFTProprioProjector
    head: L1ActionHead | None
    source: str
    """The checkpoint directory, or 'random' (weights not trained: latency and memory only)."""

    def oft_policy(self) -> OFTPolicyModel:
        if self.head is None:
            raise ValueError(f"{self.source}: loaded without the action head (need_head=False)")
        return OFTPolicyModel(self.vla, TowerNormalize(self.normalization), self.head, self.proprio, self.stats,
                              self.tokenizer).eval()


def load_openvla_parts(root: str | Path, dtype: torch.dtype = torch.bfloat16, unnorm_key: str | None = None,
                       need_head: bool = True) -> OpenVLAParts:
    """Everything from a local OpenVLA-OFT directory; a missing file or tensor is an RsdError naming it."""
    root = Path(root)
    proprio_path = find_component(root, "proprio_projector")
    head_path = find_component(root, "action_head") if need_head else None
    normalization = load_tower_normalization(root / "preprocessor_config.json")
    stats = OFTStats.load(root / "dataset_statistics.json", unnorm_key)
    tokenizer = load_tokenizer(root)
    vla = load_openvla(root, dtype)
    proprio = load_component(OFTProprioProjector(vla.hidden_size), proprio_path, dtype)
    head = load_component(L1ActionHead(vla.hidden_size), head_path, dtype) if head_path else None
    return OpenVLAParts(vla, normalization, tokenizer, stats, proprio, head, str(root))


class _BosTokenizer:
    """The tiny byte-level BPE with a BOS id in front: prompt ids for random-weight timing only."""

    def __init__(self) -> None:
        from rsd_pl.models.backbone import build_text_tokenizer

        self.inner = build_text_tokenizer(512)

    def encode(self, text: str):
        ids = [1] + self.inner.encode(text).ids

        class Encoding:  # the one attribute prompt_ids reads
            pass

        encoding = Encoding()
        encoding.ids = ids
        return encoding


def random_openvla_parts(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> OpenVLAParts:
    """OpenVLA-OFT 7B's architecture (DINOv2-L + SigLIP-so400m, Llama-2-7B, OFT's head and proprio projector)
    with random weights, built directly on `device`: for latency and peak-memory checks only."""
    spec = OpenVLASpec(towers=(KNOWN_TOWERS["vit_large_patch14_reg4_dinov2"],
                               KNOWN_TOWERS["vit_so400m_patch14_siglip_224"]),
                       text_config={"vocab_size": 32064, "pad_token_id": 32000}, pad_token_id=32000, source="random")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            vla = OpenVLA(spec)
            proprio, head = OFTProprioProjector(spec.hidden_size), L1ActionHead(spec.hidden_size)
    finally:
        torch.set_default_dtype(previous)
    bounds = np.ones(8)
    stats = OFTStats(-np.ones(7), np.ones(7), np.array([True] * 6 + [False]), -bounds, bounds, key="random")
    return OpenVLAParts(vla.eval(), OFT_NORMALIZATION, _BosTokenizer(), stats, proprio, head, "random")


def load_oft_policy(root: str | Path, dtype: torch.dtype = torch.bfloat16, unnorm_key: str | None = None
                    ) -> OFTPolicyModel:
    """The `oft` baseline from an OpenVLA-OFT checkpoint directory: OFT's own weights, head, proprio
    projector, statistics, tokenizer and processor values."""
    return load_openvla_parts(root, dtype, unnorm_key, need_head=True).oft_policy()
