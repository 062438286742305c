"""The native OpenVLA network and its strict loader (no remote code: the checkpoint's .py files are never read).

    OpenVLA
      vision_backbone  FusedVisionBackbone   pixel_values [B, V, 6, S, S] -> patches [B, V*N, E]
      projector        FusedProjector        [B, V*N, E] -> [B, V*N, H]
      language_model   transformers LlamaForCausalLM (only `.model` runs: hidden states, never logits)

Module names equal the checkpoint's tensor names, so `load_state_dict(strict=True)` is the check
that nothing is missing or extra. The model is built on the `meta` device and the tensors are
assigned as read, so a 7B checkpoint is held in memory once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import DynamicCache, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from rsd_pl.errors import RsdError
from rsd_pl.models.openvla.config import OpenVLASpec, read_openvla_config
from rsd_pl.models.openvla.vision import FusedProjector, FusedVisionBackbone

PROMPT = "In: What action should the robot take to {}?\nOut:"
EMPTY_TOKEN = 29871  # SentencePiece's "▁": OFT appends it after "Out:" as at training time
STOP_TOKEN = 2


class OpenVLA(nn.Module):
    def __init__(self, spec: OpenVLASpec):
        super().__init__()
        self.spec = spec
        self.vision_backbone = FusedVisionBackbone(spec.towers)
        self.projector = FusedProjector(spec.vision_dim, spec.hidden_size)
        self.language_model = LlamaForCausalLM(spec.llama_config())

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def llm(self) -> nn.Module:
        """The LlamaModel (decoder stack + final norm) inside LlamaForCausalLM."""
        return self.language_model.model

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.llm.embed_tokens(ids)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        """[B, V, 6, S, S] -> projected patches [B, V*N, H]."""
        return self.projector(self.vision_backbone(pixel_values))

    def run(self, embeds: Tensor, mask: Tensor, cache: DynamicCache | None = None) -> Tensor:
        """Llama over embeds [B, n, H] after the tokens in `cache`; mask bool [B, 1, n, cached + n]
        (True = attend), used as given (transformers 5 takes a 4D mask as is). -> final-norm hidden [B, n, H]."""
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, past_key_values=cache,
                       use_cache=cache is not None)
        return out.last_hidden_state


class TowerNormalize(nn.Module):
    """Images in [0, 1] [B, V, 3, S, S] -> pixel values [B, V, 3 * towers, S, S]: (x - mean) / std per tower,
    towers stacked on channels (DINOv2 first), with the processor's values (preprocess.load_tower_normalization)."""

    def __init__(self, normalization: list[tuple[tuple[float, ...], tuple[float, ...]]]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([m for m, _ in normalization]).view(-1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([s for _, s in normalization]).view(-1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        towers = (images.float().unsqueeze(2) - self.mean) / self.std  # (B, V, towers, 3, S, S), fp32 as OFT
        return towers.flatten(2, 3)  # (B, V, 3*towers, S, S)


def shard_files(root: Path) -> list[Path]:
    """The weight files of a checkpoint directory: the index's shards, or a single model.safetensors."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise RsdError(f"{root}: missing weight shard(s) {', '.join(missing)} listed in {index.name}")
        return [root / n for n in names]
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    raise RsdError(f"{root}: no model.safetensors.index.json and no model.safetensors (OpenVLA weights)")


def read_shards(files: list[Path], dtype: torch.dtype) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = f.get_tensor(key).to(dtype)
    return tensors


def check_tensors(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Every parameter present with its shape, nothing extra: else an RsdError naming the tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {expected[k]})"
             for k in sorted(set(expected) & set(tensors)) if tuple(tensors[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:5])}")
    if wrong:
        problems.append(f"wrong shape: {', '.join(wrong[:5])}")
    if problems:
        raise RsdError(f"{source}: the weights do not match the OpenVLA config: {'; '.join(problems)}")


def build_openvla(spec: OpenVLASpec, device: str | torch.device = "meta") -> OpenVLA:
    with torch.device(device):
        return OpenVLA(spec)


def load_openvla(root: str | Path, dtype: torch.dtype = torch.bfloat16) -> OpenVLA:
    """The native OpenVLA from a local checkpoint directory (config.json + safetensors shards), on CPU."""
    root = Path(root)
    spec = read_openvla_config(root / "config.json")
    model = build_openvla(spec, "meta")
    tensors = read_shards(shard_files(root), dtype)
    check_tensors(model, tensors, str(root))
    model.load_state_dict(tensors, strict=True, assign=True)
    # non-persistent buffers are not in the checkpoint: build the rotary tables for real
    model.language_model.model.rotary_emb = LlamaRotaryEmbedding(model.language_model.config)
    return model.eval()


def load_tokenizer(root: Path):
    """The checkpoint's Llama tokenizer from tokenizer.json (a `tokenizers.Tokenizer`; adds BOS)."""
    from tokenizers import Tokenizer

    path = Path(root) / "tokenizer.json"
    if not path.is_file():
        raise RsdError(f"{root}: no tokenizer.json (the checkpoint's fast Llama tokenizer)")
    return Tokenizer.from_file(str(path))


def prompt_ids(tokenizer, instruction: str) -> list[int]:
    """BOS + OFT's prompt for the instruction (lower-cased) + token 29871 when missing, as OFT predicts."""
    ids = tokenizer.encode(PROMPT.format(instruction.lower())).ids
    return ids if ids[-1] == EMPTY_TOKEN else [*ids, EMPTY_TOKEN]
