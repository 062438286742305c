"""RSD's backbone on the native OpenVLA-OFT: OFT's prefix, bidirectional, then block-causal RSD blocks.

Sequence (positions 0..):

    [BOS] [V x 256 patches] [proprio] ([object_pos]) [prompt + 29871, PAD to max_text_len] | [Q] [B1] .. [B(L-1)]
    |<------------------------ prefix: P tokens, bidirectional ------------------------>| |<- blocks of T ->|

- The prefix is OFT's own (BOS, patches, OFT's proprio projector on OFT-normalised proprio, the prompt
  with token 29871), attended bidirectionally as OFT was trained. Prompts are right-padded with <PAD>
  to a fixed length and the pads are attended, so a training batch and a batch-1 query see the same
  layout (as the tiny backbone does); a prompt longer than `max_text_len` is an error, not truncated.
- Each RSD block (the Q block, then one block per code layer) sees the prefix, the earlier blocks and
  itself (block-causal), and the prefix never sees the blocks: so prefill + KV-cached extends give the
  same hidden states as one teacher-forced pass, and the cache can be cropped at block boundaries.
- LoRA (peft) on the language model only, selected by regex; the towers and projector stay frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig, StateProjector, apply_language_lora, check_images
from rsd_pl.models.openvla.model import TowerNormalize, prompt_ids
from rsd_pl.models.openvla.parts import OpenVLAParts, load_openvla_parts


def block_causal_mask(prefix_len: int, block_len: int, past: int, new: int, batch: int,
                      device: torch.device, query_len: int | None = None) -> Tensor:
    """bool [B, 1, new, past + new]: queries at positions past..past+new-1, keys 0..past+new-1.
    After the prefix come a first block of `query_len` tokens (default `block_len`), then blocks of
    `block_len`. A prefix query sees the prefix; a block query sees the prefix and every block up to its own."""
    first = block_len if query_len is None else query_len
    query = torch.arange(past, past + new, device=device).view(-1, 1)
    key = torch.arange(past + new, device=device).view(1, -1)

    def block_of(position: Tensor) -> Tensor:
        after = position - prefix_len - first
        later = 1 + after.div(block_len, rounding_mode="floor")
        return torch.where(position < prefix_len, -1, torch.where(after < 0, 0, later))

    query_block, key_block = block_of(query), block_of(key)
    allowed = (key_block == -1) | ((query_block >= 0) & (key_block <= query_block))
    return allowed.view(1, 1, new, past + new).expand(batch, -1, -1, -1)


class OpenVLABackbone(nn.Module):
    """Native OpenVLA-OFT from `cfg.path` with LoRA on its language model; the backbone interface of
    `rsd_pl.models.backbone` (hidden_size, dtype, prefix_len, embed_prefix, run)."""

    def __init__(self, cfg: BackboneConfig, dtype: torch.dtype, block_len: int, parts: OpenVLAParts | None = None,
                 query_len: int | None = None):
        """parts: an already loaded checkpoint (default: load cfg.path without OFT's action head).
        query_len: tokens of the query block after the prefix (default block_len); later blocks have block_len."""
        super().__init__()
        cfg.validate()
        self.cfg, self.block_len, self.query_len = cfg, block_len, query_len
        if parts is None:
            parts = load_openvla_parts(check_openvla_dir(cfg.path), dtype, cfg.unnorm_key, need_head=False)
        vla = parts.vla
        if cfg.image_size != vla.spec.towers[0].image_size:
            raise RsdError(f"backbone.image_size={cfg.image_size} but {parts.source}/config.json's towers take "
                           f"{vla.spec.towers[0].image_size} px images")
        self.hidden_size = vla.hidden_size
        self.patches_per_image = vla.spec.patches_per_image
        if cfg.gradient_checkpointing:
            vla.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.vla = apply_language_lora(vla, cfg) if cfg.lora_rank > 0 else vla.requires_grad_(False)
        self.normalize = TowerNormalize(parts.normalization)
        self.text_tokenizer = parts.tokenizer
        self.pad_id = vla.spec.pad_token_id
        self.oft_stats = parts.stats
        self.proprio_proj = parts.proprio
        self.object_proj = (StateProjector(cfg.object_pos_dim, self.hidden_size).to(dtype)
                            if cfg.use_object_pos else None)
        self._ids_cache: dict[str, list[int]] = {}

    @property
    def core(self) -> nn.Module:
        """The OpenVLA network (inside the peft wrapper when LoRA is on)."""
        return self.vla.get_base_model() if hasattr(self.vla, "get_base_model") else self.vla

    @property
    def dtype(self) -> torch.dtype:
        return self.core.llm.embed_tokens.weight.dtype

    @property
    def prefix_len(self) -> int:
        return 1 + self.cfg.num_cameras * self.patches_per_image + 1 + int(self.cfg.use_object_pos) + \
            self.cfg.max_text_len - 1

    def set_state_stats(self, key: str, mean: Tensor, std: Tensor) -> None:
        """proprio: OFT normalises with its dataset_statistics.json (q01/q99), so the data's stats are unused."""
        if key == "object_pos" and self.object_proj is not None:
            self.object_proj.set_stats(mean, std)

    def text_ids(self, instructions: list[str]) -> Tensor:
        """-> int64 [B, max_text_len]: BOS + OFT prompt + 29871, right-padded with <PAD>."""
        rows = []
        for text in instructions:
            if text not in self._ids_cache:
                ids = prompt_ids(self.text_tokenizer, text)
                if len(ids) > self.cfg.max_text_len:
                    raise RsdError(f"the prompt of {text!r} is {len(ids)} tokens, more than backbone.max_text_len="
                                   f"{self.cfg.max_text_len}; raise max_text_len")
                self._ids_cache[text] = ids + [self.pad_id] * (self.cfg.max_text_len - len(ids))
            rows.append(self._ids_cache[text])
        return torch.tensor(rows, dtype=torch.long)

    def image_tokens(self, images: Tensor) -> Tensor:
        """images [B, V, 3, S, S] in [0, 1] (OFT pipeline) -> [B, V*N, H]."""
        check_images(images, self.cfg.num_cameras)
        return self.core.image_embeddings(self.normalize(images).to(self.dtype))

    def embed_prefix(self, batch: dict) -> Tensor:
        """-> [B, P, H]: BOS, patches, proprio token (, object_pos token), prompt[1:] + pads."""
        images = batch["images"]
        text = self.core.embed_tokens(self.text_ids(batch["instruction"]).to(images.device))  # (B, n, H)
        proprio = self.oft_stats.normalize_proprio(batch["proprio"].detach().cpu().double().numpy())
        states = [self.proprio_proj(torch.as_tensor(proprio, device=images.device).to(self.dtype)).unsqueeze(1)]
        if self.object_proj is not None:
            states.append(self.object_proj(batch["object_pos"].to(self.dtype)))
        return torch.cat([text[:, :1], self.image_tokens(images), *states, text[:, 1:]], dim=1)  # (B, P, H)

    def run(self, embeds: Tensor, cache: DynamicCache | None = None,
            use_cache: bool = True) -> tuple[Tensor, DynamicCache | None]:
        """Prefix bidirectional, blocks block-causal; positions continue after the cached tokens."""
        if use_cache and cache is None:
            cache = DynamicCache(config=self.core.language_model.config)
        past = cache.get_seq_length() if use_cache else 0
        mask = block_causal_mask(self.prefix_len, self.block_len, past, embeds.shape[1], embeds.shape[0],
                                 embeds.device, self.query_len)
        hidden = self.core.run(embeds.to(self.dtype), mask, cache if use_cache else None)
        return hidden, (cache if use_cache else None)


def check_openvla_dir(path: str | None) -> Path:
    """A local OpenVLA-OFT directory: config.json, weights, tokenizer, processor config, OFT's components."""
    if not path:
        raise RsdError("backbone.path is not set: point it at a local OpenVLA-OFT directory "
                       "(e.g. moojink/openvla-7b-oft-finetuned-libero-spatial downloaded by hand)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise RsdError(f"backbone.path={str(root)!r}: no such directory")
    names = ("config.json", "preprocessor_config.json", "tokenizer.json", "dataset_statistics.json")
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise RsdError(f"backbone.path={str(root)!r} is incomplete: missing {', '.join(missing)}")
    return root
