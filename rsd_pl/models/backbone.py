"""VLA backbones: (images, instruction, proprio[, object_pos]) -> prefix embeddings; embeddings -> hidden + KV cache.

One interface, two implementations:

- `TinyVLM`: SigLIP vision tower + Llama language model built from `transformers` configs, random init,
  with a byte-level BPE text tokenizer trained in memory on a fixed corpus (deterministic, no download).
- `OpenVLABackbone` (rsd_pl/models/openvla/backbone.py): the native OpenVLA-OFT network from a local
  checkpoint directory (plain torch + transformers' Llama, no remote code), bf16, LoRA (peft) restricted to the
  language model, OFT's bidirectional prefix followed by block-causal RSD blocks.

Both expose:
    hidden_size: int
    embed_prefix(batch) -> [B, P, H]      images + instruction + proprio (+ object_pos), P fixed by config
    run(embeds [B, N, H], cache) -> (hidden [B, N, H], cache)   causal, appends to the transformers cache

The prompt is always padded to `max_text_len` tokens and every prefix token is attended (no padding
mask), so training batches and batch-1 evaluation see exactly the same sequence layout.

`rsd_pl.models.factory.build_backbone` builds either from a `BackboneConfig`; this module never imports
the openvla package (which imports the shared pieces from here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from rsd_pl.errors import RsdError

# Sizes of the tiny VLM presets (parameter counts are printed by scripts/bench_train.py).
TINY_PRESETS: dict[str, dict[str, int]] = {
    "tiny-1m": dict(vision_hidden=64, vision_layers=1, vision_heads=2, vision_mlp=128,
                    hidden=128, layers=3, heads=4, kv_heads=2, mlp=320),
    "tiny-5m": dict(vision_hidden=128, vision_layers=2, vision_heads=4, vision_mlp=256,
                    hidden=192, layers=4, heads=4, kv_heads=2, mlp=512),
    "tiny-30m": dict(vision_hidden=256, vision_layers=4, vision_heads=4, vision_mlp=768,
                     hidden=512, layers=8, heads=8, kv_heads=4, mlp=1408),
}

# Fixed corpus for the tiny text tokenizer: LIBERO-style instruction vocabulary.
_TEXT_CORPUS = """
pick up the black bowl between the plate and the ramekin and place it on the plate
pick up the black bowl next to the ramekin and place it on the plate
pick up the black bowl from table center and place it on the plate
pick up the black bowl on the cookie box and place it on the plate
pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate
pick up the black bowl on the ramekin and place it on the plate
pick up the black bowl next to the cookie box and place it on the plate
pick up the black bowl on the stove and place it on the plate
pick up the black bowl next to the plate and place it on the plate
pick up the black bowl on the wooden cabinet and place it on the plate
pick up the alphabet soup and place it in the basket
pick up the cream cheese and place it in the basket
pick up the salad dressing and place it in the basket
pick up the bbq sauce and place it in the basket
pick up the ketchup and place it in the basket
pick up the tomato sauce and place it in the basket
pick up the butter and place it in the basket
pick up the milk and place it in the basket
pick up the chocolate pudding and place it in the basket
pick up the orange juice and place it in the basket
open the middle drawer of the cabinet
put the bowl on the stove
put the wine bottle on top of the cabinet
open the top drawer and put the bowl inside
put the bowl on top of the cabinet
push the plate to the front of the stove
put the cream cheese in the bowl
turn on the stove
put the bowl on the plate
put the wine bottle on the rack
put both the alphabet soup and the tomato sauce in the basket
put both the cream cheese box and the butter in the basket
turn on the stove and put the moka pot on it
put the black bowl in the bottom drawer of the cabinet and close it
put the white mug on the left plate and put the yellow and white mug on the right plate
pick up the book and place it in the back compartment of the caddy
put the white mug on the plate and put the chocolate pudding to the right of the plate
put both the alphabet soup and the cream cheese box in the basket
put both moka pots on the stove
put the yellow and white mug in the microwave and close it
move the red mug to the left of the akita black bowl near the front of the table
"""

SPECIAL_TOKENS = ["<pad>", "<bos>", "<unk>"]


@dataclass
class BackboneConfig:
    """Which backbone and how its prefix is built."""

    kind: str = "tiny"
    """`tiny` (SigLIP + Llama from configs, random init) or `openvla` (local checkpoint directory)."""
    preset: str = "tiny-5m"
    """Tiny preset name, one of TINY_PRESETS."""
    image_size: int = 64
    """Side S of the images the backbone receives (tiny: 64 or 128; openvla: 224, its towers' size)."""
    num_cameras: int = 1
    """V: cameras per observation (agentview first, then wrist)."""
    patch_size: int = 8
    """Tiny vision patch size; patches per camera = (S / patch_size)^2 / image_pool^2."""
    image_pool: int = 1
    """Tiny: average-pool the patch grid by this factor before the projector (shorter sequence)."""
    proprio_dim: int = 8
    use_object_pos: bool = False
    """Feed the privileged object_pos [B, 6] through its own projector (one extra prefix token)."""
    object_pos_dim: int = 6
    max_text_len: int = 24
    """Prompt tokens, padded to exactly this many (tiny truncates a longer prompt; openvla refuses it)."""
    text_vocab_size: int = 512
    torch_dtype: str = "bfloat16"
    """openvla: dtype the checkpoint is loaded in (bfloat16 on GPUs)."""
    path: str | None = None
    """openvla: local OpenVLA-OFT directory (config.json, model*.safetensors + index, tokenizer.json,
    preprocessor_config.json, dataset_statistics.json, proprio_projector--*_checkpoint.pt)."""
    unnorm_key: str | None = None
    """openvla: the dataset_statistics.json entry for OFT's proprio normalisation (None: the only one)."""
    gradient_checkpointing: bool = False
    """openvla: recompute the language model's activations in backward (less GPU memory at 7B)."""
    lora_rank: int = 32
    """openvla: LoRA rank on the language model; 0 = no adapters (everything frozen: inference or timing)."""
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_regex: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    """peft target_modules regex: must only match modules of the language model."""
    extra: dict = field(default_factory=dict)
    """Free-form overrides of the tiny preset sizes (keys of TINY_PRESETS entries)."""

    @property
    def image_pipeline(self) -> str:
        """How raw frames become the model's images (rsd_pl.data.obs.preprocess_images): `oft` for openvla
        (OFT's JPEG round trip, Lanczos resize and centre crop), `resize` for tiny."""
        return "oft" if self.kind == "openvla" else "resize"

    def validate(self) -> None:
        if self.kind not in ("tiny", "openvla"):
            raise RsdError(f"backbone.kind={self.kind!r}: expected 'tiny' or 'openvla'")
        if self.kind == "tiny":
            if self.preset not in TINY_PRESETS:
                raise RsdError(f"backbone.preset={self.preset!r}: expected one of {sorted(TINY_PRESETS)}")
            grid = self.image_size // self.patch_size
            if self.image_size % self.patch_size or grid % self.image_pool:
                raise RsdError(f"backbone.image_size={self.image_size} must be divisible by patch_size="
                               f"{self.patch_size} and the grid by image_pool={self.image_pool}")
            unknown = set(self.extra) - set(TINY_PRESETS[self.preset])
            if unknown:
                raise RsdError(f"backbone.extra has unknown keys {sorted(unknown)}")
        if self.num_cameras < 1:
            raise RsdError(f"backbone.num_cameras={self.num_cameras}: must be >= 1")


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line for line in _TEXT_CORPUS.strip().splitlines() if line]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer.to_str()


def build_text_tokenizer(vocab_size: int = 512):
    """Byte-level BPE trained on the fixed corpus: deterministic, encodes any string, no download."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_tokenizer_json(vocab_size))


class StateProjector(nn.Module):
    """A low-dimensional state vector -> one prefix token: [B, n] -> [B, 1, H].

    The raw state is standardised with `mean` / `std` buffers (set from the training data by the
    LightningModule, saved with the weights), so callers always pass raw env values.
    """

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    @torch.no_grad()
    def set_stats(self, mean: Tensor, std: Tensor, min_std: float = 1e-3) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=min_std))

    def forward(self, state: Tensor) -> Tensor:
        return self.net((state - self.mean) / self.std).unsqueeze(1)  # (B, 1, H)


def _state_tokens(batch: dict, proprio: StateProjector, object_proj: StateProjector | None,
                  dtype: torch.dtype) -> list[Tensor]:
    tokens = [proprio(batch["proprio"].to(dtype))]
    if object_proj is not None:
        if "object_pos" not in batch:
            raise RsdError("backbone.use_object_pos is true but the batch has no 'object_pos' "
                           "(demo files need obs/object_pos, the env runner must provide it)")
        tokens.append(object_proj(batch["object_pos"].to(dtype)))
    return tokens


def check_images(images: Tensor, num_cameras: int) -> None:
    if images.dim() != 5 or images.shape[1] != num_cameras or images.shape[2] != 3:
        raise RsdError(f"images: expected [B, V={num_cameras}, 3, S, S], got {list(images.shape)}")


class TinyVLM(nn.Module):
    """SigLIP vision tower + Llama language model, both random init from configs."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        sizes = {**TINY_PRESETS[cfg.preset], **cfg.extra}
        self.hidden_size = sizes["hidden"]
        self.text_tokenizer = build_text_tokenizer(cfg.text_vocab_size)
        self.vision = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=sizes["vision_hidden"], intermediate_size=sizes["vision_mlp"],
            num_hidden_layers=sizes["vision_layers"], num_attention_heads=sizes["vision_heads"],
            image_size=cfg.image_size, patch_size=cfg.patch_size, vision_use_head=False))
        self.vision_proj = nn.Sequential(nn.Linear(sizes["vision_hidden"], self.hidden_size), nn.GELU(),
                                         nn.Linear(self.hidden_size, self.hidden_size))
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, 1, self.hidden_size) * 0.02)
        self.language = LlamaModel(LlamaConfig(
            vocab_size=self.text_tokenizer.get_vocab_size(), hidden_size=self.hidden_size,
            intermediate_size=sizes["mlp"], num_hidden_layers=sizes["layers"],
            num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"],
            max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=1))
        self.proprio_proj = StateProjector(cfg.proprio_dim, self.hidden_size)
        self.object_proj = StateProjector(cfg.object_pos_dim, self.hidden_size) if cfg.use_object_pos else None
        self._ids_cache: dict[str, list[int]] = {}

    @property
    def prefix_len(self) -> int:
        grid = self.cfg.image_size // self.cfg.patch_size // self.cfg.image_pool
        return self.cfg.num_cameras * grid * grid + self.cfg.max_text_len + 1 + int(self.cfg.use_object_pos)

    @property
    def dtype(self) -> torch.dtype:
        return self.language.embed_tokens.weight.dtype

    def set_state_stats(self, key: str, mean: Tensor, std: Tensor) -> None:
        """Standardisation of the raw `proprio` / `object_pos` inputs, from the training data."""
        projector = self.proprio_proj if key == "proprio" else self.object_proj
        if projector is not None:
            projector.set_stats(mean, std)

    def text_ids(self, instructions: list[str]) -> Tensor:
        """instructions -> int64 [B, max_text_len]: <bos> + BPE ids, right-padded with <pad>, truncated."""
        rows = []
        for text in instructions:
            if text not in self._ids_cache:
                ids = [1] + self.text_tokenizer.encode(text.lower().strip()).ids
                ids = ids[: self.cfg.max_text_len]
                self._ids_cache[text] = ids + [0] * (self.cfg.max_text_len - len(ids))
            rows.append(self._ids_cache[text])
        return torch.tensor(rows, dtype=torch.long)

    def image_tokens(self, images: Tensor) -> Tensor:
        """images [B, V, 3, S, S] in [0, 1] -> [B, V * patches, H]."""
        check_images(images, self.cfg.num_cameras)
        batch, cams = images.shape[:2]
        pixels = ((images.flatten(0, 1) - 0.5) / 0.5).to(self.dtype)  # (B*V, 3, S, S), SigLIP normalisation
        patches = self.vision(pixel_values=pixels).last_hidden_state  # (B*V, N, Hv)
        if self.cfg.image_pool > 1:
            grid = int(patches.shape[1] ** 0.5)
            patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, grid, grid)  # (B*V, Hv, g, g)
            patches = nn.functional.avg_pool2d(patches, self.cfg.image_pool).flatten(2).transpose(1, 2)
        tokens = self.vision_proj(patches).unflatten(0, (batch, cams)) + self.camera_embed  # (B, V, N', H)
        return tokens.flatten(1, 2)  # (B, V*N', H)

    def embed_prefix(self, batch: dict) -> Tensor:
        """-> [B, P, H]: image patches, instruction tokens, proprio token (, object_pos token)."""
        images = batch["images"]
        text = self.language.embed_tokens(self.text_ids(batch["instruction"]).to(images.device))
        states = _state_tokens(batch, self.proprio_proj, self.object_proj, self.dtype)
        return torch.cat([self.image_tokens(images), text, *states], dim=1)  # (B, P, H)

    def run(self, embeds: Tensor, cache: DynamicCache | None = None,
            use_cache: bool = True) -> tuple[Tensor, DynamicCache | None]:
        """Causal pass over embeds [B, N, H] after the tokens already in `cache` (None: fresh cache)."""
        return _run_llama(self.language, embeds, cache, use_cache)


def _run_llama(language: nn.Module, embeds: Tensor, cache: DynamicCache | None,
               use_cache: bool) -> tuple[Tensor, DynamicCache | None]:
    """Llama over inputs_embeds; positions continue after the cache; no cache kept when use_cache=False."""
    if use_cache and cache is None:
        cache = DynamicCache(config=language.config)
    out = language(inputs_embeds=embeds, past_key_values=cache if use_cache else None, use_cache=use_cache)
    return out.last_hidden_state, (out.past_key_values if use_cache else None)


def apply_language_lora(model: nn.Module, cfg: BackboneConfig) -> nn.Module:
    """LoRA on the modules whose full name matches cfg.lora_target_regex; everything else frozen."""
    import re

    from peft import LoraConfig, get_peft_model

    pattern = re.compile(cfg.lora_target_regex)
    targets = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
    if not targets:
        raise RsdError(f"backbone.lora_target_regex={cfg.lora_target_regex!r} matches no module")
    outside = [name for name in targets if "language_model" not in name]
    if outside:
        raise RsdError(f"backbone.lora_target_regex matches modules outside the language model: {outside[:3]}")
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_regex, init_lora_weights="gaussian")
    return get_peft_model(model, lora)
