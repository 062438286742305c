"""An OpenVLA(-OFT) checkpoint's `config.json` -> the sizes of the native network.

OpenVLA names its vision towers by timm model id and builds them with `timm.create_model`; the
native towers need the same architecture facts without timm, so the ids OpenVLA uses are listed
here (sizes from timm's model definitions, checked against `manifest_7b.json` in the tests).
`vision_tower_overrides` (an extra key of the test fixture's tiny checkpoint) is merged over them,
as the fixture's generator merged it into timm's kwargs.
The Llama config is `LlamaConfig(**text_config)`: OpenVLA passes no sizes for Llama-2-7B, so its
`LlamaConfig()` defaults apply (rms_norm_eps 1e-6, rope theta 1e4, 2048 positions), not
Llama-2-7b-hf's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import LlamaConfig

from rsd_pl.errors import RsdError


@dataclass(frozen=True)
class TowerSpec:
    """One ViT tower with timm's layout (patch_embed.proj, cls/reg tokens, blocks, norm, attn_pool)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    class_token: bool
    reg_tokens: int
    layer_scale: bool
    no_embed_class: bool
    """pos_embed covers the patches only; cls/register tokens are prepended after adding it."""
    attn_pool: bool
    """SigLIP's MAP head: in the weights, never used by OpenVLA."""
    patch_size: int = 14
    image_size: int = 224

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # timm: int(dim * mlp_ratio)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens


# timm ids OpenVLA's vision backbones use (the pretrained tag after the dot does not change the network).
KNOWN_TOWERS: dict[str, TowerSpec] = {
    "vit_large_patch14_reg4_dinov2": TowerSpec(
        embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, class_token=True, reg_tokens=4,
        layer_scale=True, no_embed_class=True, attn_pool=False),
    "vit_so400m_patch14_siglip_224": TowerSpec(
        embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, class_token=False, reg_tokens=0,
        layer_scale=False, no_embed_class=False, attn_pool=True),
}
TOWER_OVERRIDE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")
_LLAMA_IGNORED_KEYS = ("model_type", "torch_dtype", "dtype", "architectures", "_name_or_path")


@dataclass(frozen=True)
class OpenVLASpec:
    """Everything the native network needs from config.json."""

    towers: tuple[TowerSpec, ...]
    """(DINOv2, SigLIP): the primary featurizer, then the fused one."""
    text_config: dict
    """Keyword arguments of LlamaConfig (sizes; unset fields take LlamaConfig's defaults)."""
    pad_token_id: int
    source: str
    """The config.json it came from (for error messages)."""

    @property
    def vision_dim(self) -> int:
        return sum(t.embed_dim for t in self.towers)

    @property
    def patches_per_image(self) -> int:
        return self.towers[0].grid ** 2

    def llama_config(self) -> LlamaConfig:
        config = LlamaConfig(**self.text_config)
        config._attn_implementation = "sdpa"
        return config

    @property
    def hidden_size(self) -> int:
        return int(self.llama_config().hidden_size)


def read_openvla_config(path: Path) -> OpenVLASpec:
    """Parse an OpenVLA config.json; a config of another model is an RsdError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RsdError(f"{path}: no such file (an OpenVLA checkpoint directory has config.json)")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "openvla" or "timm_model_ids" not in raw:
        raise RsdError(f"{path}: not an OpenVLA config (model_type={raw.get('model_type')!r}, expected 'openvla' "
                       "with timm_model_ids); point backbone.path at an OpenVLA(-OFT) checkpoint directory")
    if not raw.get("use_fused_vision_backbone", False) or len(raw["timm_model_ids"]) != 2:
        raise RsdError(f"{path}: only the fused DINOv2 + SigLIP vision backbone of OpenVLA(-OFT) is supported "
                       f"(timm_model_ids={raw['timm_model_ids']})")
    sizes = raw.get("image_sizes") or [224, 224]
    overrides = raw.get("vision_tower_overrides") or {}
    unknown = sorted(set(overrides) - set(TOWER_OVERRIDE_KEYS))
    if unknown:
        raise RsdError(f"{path}: vision_tower_overrides has unknown keys {unknown} (known: {TOWER_OVERRIDE_KEYS})")
    towers = []
    for timm_id, size in zip(raw["timm_model_ids"], sizes, strict=True):
        base = KNOWN_TOWERS.get(timm_id.split(".")[0])
        if base is None:
            raise RsdError(f"{path}: vision tower {timm_id!r} is not one of OpenVLA's ({sorted(KNOWN_TOWERS)})")
        towers.append(replace(base, image_size=int(size), **overrides))
    if len({(t.grid, t.patch_size) for t in towers}) != 1:
        raise RsdError(f"{path}: the two vision towers give different patch grids; they cannot be fused")
    text = {k: v for k, v in (raw.get("text_config") or {}).items() if k not in _LLAMA_IGNORED_KEYS}
    pad = int(raw.get("pad_token_id", text.get("pad_token_id", 32000)))
    text.setdefault("pad_token_id", pad)
    text.setdefault("vocab_size", 32064)
    return OpenVLASpec(towers=tuple(towers), text_config=text, pad_token_id=pad, source=str(path))
