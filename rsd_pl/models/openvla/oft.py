"""OpenVLA-OFT's own action path, reimplemented: the `oft` decoding mode (the published L1 baseline).

- `L1ActionHead`: OFT's MLP-ResNet regression head (layer norm, fc 7H -> H, ReLU, two residual
  blocks (LayerNorm, Linear, ReLU), layer norm, fc H -> 7), tensor names as in the checkpoint.
- `OFTProprioProjector`: fc 8 -> H, GELU, fc H -> H.
- `OFTStats`: `dataset_statistics.json` (q01/q99 bounds, mask): proprio normalisation, action
  un-normalisation (float64, as OFT) and OFT's gripper post-processing.
- `OFTPolicyModel.normalized_actions`: OFT's sequence [BOS, patches, proprio token, prompt + 29871,
  56 zeroed action slots, stop token], bidirectional attention, and the head on OFT's window of
  hidden states (which starts one position before the first slot: a quirk reproduced on purpose).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rsd_pl.errors import RsdError
from rsd_pl.models.openvla.model import STOP_TOKEN, OpenVLA, TowerNormalize, prompt_ids

NUM_ACTIONS_CHUNK, ACTION_DIM = 8, 7
ACTION_SLOTS = NUM_ACTIONS_CHUNK * ACTION_DIM


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_blocks: int = 2):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.mlp_resnet_blocks = nn.ModuleList(ResidualBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1ActionHead(nn.Module):
    """[B, 56, H] hidden states -> normalised actions [B, 8, 7] (one row of 7 slots per chunk step)."""

    def __init__(self, hidden_size: int, action_dim: int = ACTION_DIM):
        super().__init__()
        self.model = MLPResNet(hidden_size * action_dim, hidden_size, action_dim)

    def forward(self, action_hidden: Tensor) -> Tensor:
        return self.model(action_hidden.reshape(action_hidden.shape[0], NUM_ACTIONS_CHUNK, -1))  # (B, T, 7*H)->(B,T,D)


class OFTProprioProjector(nn.Module):
    def __init__(self, hidden_size: int, proprio_dim: int = 8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(proprio_dim, hidden_size), nn.Linear(hidden_size, hidden_size)

    def forward(self, proprio: Tensor) -> Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(proprio)))  # (B, 8) -> (B, H)


def find_component(root: Path, prefix: str) -> Path:
    """`<prefix>--<step>_checkpoint.pt` in the directory (the latest step when there are several)."""
    found = sorted(root.glob(f"{prefix}--*_checkpoint.pt"), key=lambda p: _step_of(p, prefix))
    if not found:
        raise RsdError(f"{root}: no {prefix}--<step>_checkpoint.pt (OpenVLA-OFT's {prefix.replace('_', ' ')})")
    return found[-1]


def _step_of(path: Path, prefix: str) -> int:
    step = path.name[len(prefix) + 2 : -len("_checkpoint.pt")]
    return int(step) if step.isdigit() else -1


def load_component(module: nn.Module, path: Path, dtype: torch.dtype) -> nn.Module:
    """A torch.save'd DDP state dict (`module.` prefix) into `module`, strictly; weights_only, no pickle code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v.to(dtype) for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RsdError(f"{path}: does not match {type(module).__name__}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    return module.to(dtype)


@dataclass
class OFTStats:
    """q01/q99 bounds of one dataset_statistics.json entry (BOUNDS_Q99 normalisation)."""

    action_q01: np.ndarray
    action_q99: np.ndarray
    action_mask: np.ndarray
    proprio_q01: np.ndarray
    proprio_q99: np.ndarray
    key: str

    @classmethod
    def load(cls, path: Path, key: str | None = None) -> OFTStats:
        if not path.is_file():
            raise RsdError(f"{path}: no such file (OpenVLA-OFT's dataset statistics)")
        raw = json.loads(path.read_text())
        if key is None and len(raw) == 1:
            key = next(iter(raw))
        if key not in raw:
            raise RsdError(f"{path}: statistics key {key!r} not found; set unnorm_key to one of {sorted(raw)}")
        entry = raw[key]
        action, proprio = entry["action"], entry.get("proprio", {})
        if "q01" not in proprio:
            raise RsdError(f"{path}: {key}.proprio has no q01/q99 (OFT normalises proprio with them)")
        mask = np.asarray(action.get("mask", [True] * len(action["q01"])), dtype=bool)
        return cls(np.asarray(action["q01"], np.float64), np.asarray(action["q99"], np.float64), mask,
                   np.asarray(proprio["q01"], np.float64), np.asarray(proprio["q99"], np.float64), key)

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        """[B, 8] -> clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1), float64 (OFT's normalize_proprio)."""
        proprio = np.asarray(proprio, dtype=np.float64)
        scaled = 2 * (proprio - self.proprio_q01) / (self.proprio_q99 - self.proprio_q01 + 1e-8) - 1
        return np.clip(scaled, -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[..., 7] -> 0.5 (a + 1)(q99 - q01 + 1e-8) + q01 on the masked dims, float64; the gripper as is."""
        normalized = np.asarray(normalized, dtype=np.float64)
        raw = 0.5 * (normalized + 1) * (self.action_q99 - self.action_q01 + 1e-8) + self.action_q01
        return np.where(self.action_mask, raw, normalized)


def oft_env_actions(actions: np.ndarray) -> np.ndarray:
    """OFT's process_action on un-normalised actions [..., 7]: gripper sign(2x - 1), then x (-1)
    (OFT's data has +1 open; LIBERO's env has -1 open). sign(0) = 0 stays 0 (as -0.0)."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = -np.sign(2 * out[..., -1] - 1)
    return out


class OFTPolicyModel(nn.Module):
    """The checkpoint's own L1 head and proprio projector on the native OpenVLA: one forward per chunk."""

    def __init__(self, vla: OpenVLA, normalize: TowerNormalize, head: L1ActionHead, proprio: OFTProprioProjector,
                 stats: OFTStats, tokenizer) -> None:
        super().__init__()
        self.vla, self.normalize, self.action_head, self.proprio_projector = vla, normalize, head, proprio
        self.stats, self.tokenizer = stats, tokenizer
        self.chunk_len = NUM_ACTIONS_CHUNK

    @property
    def dtype(self) -> torch.dtype:
        return self.action_head.model.fc1.weight.dtype

    def proprio_token(self, proprio: np.ndarray | Tensor) -> Tensor:
        """Raw proprio [B, 8] -> [B, 1, H]."""
        normalized = self.stats.normalize_proprio(np.asarray(torch.as_tensor(proprio).cpu(), dtype=np.float64))
        device = self.action_head.model.fc1.weight.device
        return self.proprio_projector(torch.as_tensor(normalized, device=device).to(self.dtype)).unsqueeze(1)

    def sequence(self, pixel_values: Tensor, proprio, ids: list[int]) -> tuple[Tensor, int]:
        """OFT's input embeddings for B observations sharing one prompt -> ([B, S, H], action window start)."""
        batch = pixel_values.shape[0]
        device = pixel_values.device
        text = self.vla.embed_tokens(torch.tensor([ids], device=device)).expand(batch, -1, -1)  # (B, n, H)
        patches = self.vla.image_embeddings(pixel_values.to(self.dtype))  # (B, V*N, H)
        proprio_token = self.proprio_token(proprio)  # (B, 1, H)
        slots = torch.zeros(batch, ACTION_SLOTS, text.shape[-1], dtype=text.dtype, device=device)  # zeroed embeddings
        stop = self.vla.embed_tokens(torch.tensor([[STOP_TOKEN]], device=device)).expand(batch, -1, -1)
        embeds = torch.cat([text[:, :1], patches, proprio_token, text[:, 1:], slots, stop], dim=1)  # (B, S, H)
        num_patches = patches.shape[1] + 1  # + the proprio token (OFT's NUM_PATCHES)
        return embeds, num_patches + len(ids) - 1  # OFT's slice start: NUM_PATCHES + NUM_PROMPT_TOKENS

    @torch.no_grad()
    def normalized_actions(self, batch: dict) -> Tensor:
        """Model batch (images [B, V, 3, S, S] in [0, 1] from preprocess.oft_images, raw proprio [B, 8],
        instructions) -> normalised actions [B, 8, 7]."""
        pixel_values = self.normalize(batch["images"])  # (B, V, 6, S, S)
        groups: dict[str, list[int]] = defaultdict(list)  # one forward per distinct prompt: no padding, as OFT
        for i, text in enumerate(batch["instruction"]):
            groups[text].append(i)
        out = torch.empty(len(batch["instruction"]), NUM_ACTIONS_CHUNK, ACTION_DIM)
        for text, rows in groups.items():
            index = torch.tensor(rows)
            embeds, start = self.sequence(pixel_values[index], batch["proprio"][index],
                                          prompt_ids(self.tokenizer, text))
            mask = torch.ones(len(rows), 1, embeds.shape[1], embeds.shape[1], dtype=torch.bool, device=embeds.device)
            hidden = self.vla.run(embeds, mask)  # (b, S, H), bidirectional
            out[index] = self.action_head(hidden[:, start : start + ACTION_SLOTS]).float().cpu()
        return out

