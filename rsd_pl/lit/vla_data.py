"""`VLADataModule`: observations + action chunks + RFSQ codes of demonstrations (phase 2), from any data
format of `rsd_pl.data.sources` (LIBERO-format HDF5, OpenVLA-OFT's RLDS, LeRobot).

A batch is the observation dict of docs/contracts.md plus the targets:

    images      float32 [B, V, 3, S, S]  rsd_pl.data.obs.preprocess_images (the one used at evaluation)
    proprio     float32 [B, 8]           raw (the model standardises it with stats saved in its weights)
    object_pos  float32 [B, 6]           only with use_object_pos
    instruction list[str]
    actions     float32 [B, T, D]        normalised with the tokenizer's ActionNormalizer
    codes       int64   [B, P, n, L]     the frozen tokenizer's token codes of `actions` (in [0, K**g))
    index       int64   [B]              position of each sample in its split's dataset

The tokenizer comes from the registry by name (`rfsq@best`); the concrete version it resolved to
(`tokenizer_spec`, e.g. `rfsq@3`) is what the trained models record as lineage.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsd_pl.data.chunks import chunk_indices, chunk_steps, split_episodes
from rsd_pl.data.libero_hdf5 import Episode
from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.data.obs import preprocess_images
from rsd_pl.data.sources import FORMATS, data_fingerprint, read_source
from rsd_pl.errors import RsdError
from rsd_pl.models.rfsq import ActionRFSQAE, load_tokenizer
from rsd_pl.registry import Registry


@dataclass
class TokenizerBundle:
    """The frozen phase-1 tokenizer as the phase-2 modules use it."""

    model: ActionRFSQAE
    normalizer: ActionNormalizer
    spec: str  # concrete registry version, e.g. "rfsq@3"


class VLAChunkDataset(Dataset):
    """One sample per (episode, step): raw frames, proprio, object_pos, instruction, chunk, codes."""

    def __init__(self, episodes: list[Episode], cameras: list[str], chunk_len: int,
                 tokenizer: TokenizerBundle, use_object_pos: bool):
        self.episodes, self.cameras, self.use_object_pos = episodes, cameras, use_object_pos
        self.index = chunk_indices([len(e) for e in episodes])
        chunks = [e.actions[chunk_steps(len(e), t, chunk_len)] for e, t in ((episodes[i], t) for i, t in self.index)]
        actions = torch.from_numpy(tokenizer.normalizer.normalize(np.stack(chunks)).astype(np.float32))
        self.actions = actions  # (N, T, D) normalised
        with torch.no_grad():
            codes = torch.cat([tokenizer.model.tokenize(part) for part in actions.split(4096)])
        small = codes.numel() == 0 or int(codes.max()) < 256  # one-scalar tokens fit uint8; int16 holds MAX_VOCAB
        self.codes = codes.to(torch.uint8 if small else torch.int16)  # (N, P, n, L) token codes

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        episode_id, t = self.index[i]
        episode = self.episodes[episode_id]
        item = {
            "frames": np.stack([episode.images[key][t] for key in self.cameras]),  # (V, S0, S0, 3) uint8
            "proprio": torch.from_numpy(episode.proprio[t]),
            "instruction": episode.instruction,
            "actions": self.actions[i],
            "codes": self.codes[i].long(),
            "index": i,  # lets the draft module reuse the frozen main model's outputs for this sample
            "frames_jpeg": bool(episode.attrs.get("frames_jpeg", False)),  # stored as JPEG (RLDS): decoded once
        }
        if self.use_object_pos:
            item["object_pos"] = torch.from_numpy(episode.object_pos[t])
        return item


class Collate:
    """Stack items; raw frames go through `preprocess_images` here, batched."""

    def __init__(self, image_size: int, image_pipeline: str = "resize"):
        self.image_size, self.image_pipeline = image_size, image_pipeline

    def __call__(self, items: list[dict]) -> dict:
        frames = np.stack([item["frames"] for item in items])  # (B, V, S0, S0, 3)
        jpeg = np.array([item.get("frames_jpeg", False) for item in items])
        if jpeg.all() or not jpeg.any():
            images = preprocess_images(frames, self.image_size, self.image_pipeline, jpeg_round_trip=not jpeg.any())
        else:  # a batch mixing sources: each part through its own pipeline
            images = torch.empty(len(items), frames.shape[1], 3, self.image_size, self.image_size)
            for flag in (False, True):
                images[jpeg == flag] = preprocess_images(frames[jpeg == flag], self.image_size, self.image_pipeline,
                                                         jpeg_round_trip=not flag)
        batch = {"images": images,  # (B, V, 3, S, S)
                 "instruction": [item["instruction"] for item in items]}
        for key in ("proprio", "object_pos", "actions", "codes"):
            if key in items[0]:
                batch[key] = torch.stack([item[key] for item in items])
        if "index" in items[0]:
            batch["index"] = torch.tensor([item["index"] for item in items])
        return batch


class VLADataModule(L.LightningDataModule):
    """Phase-2 training data: LIBERO-format demos tokenized with a registry tokenizer.

    Args:
        data: A LIBERO-format HDF5 file, a directory of them, or a glob; or the folder of an RLDS dataset
            (OpenVLA-OFT's release) or of a LeRobot dataset.
        tokenizer: Registry spec of the RFSQ tokenizer (`rfsq@best`, `rfsq@3`, ...).
        registry_root: Checkpoint registry folder (default: $RSD_CHECKPOINTS, else checkpoints).
        cameras: Image keys under obs/, in the order the model sees them (V = len(cameras)).
        image_size: S, the side images are resized to (must equal the backbone's image_size).
        use_object_pos: Add the privileged obs/object_pos [B, 6] (must match the backbone).
        chunk_len: T (must equal the tokenizer's and the model's).
        val_fraction: Fraction of episodes held out for validation.
        seed: Seed of the train/val episode split.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        drop_noops: Drop OpenVLA-OFT's no-op steps (|xyz,rot| < 1e-4 with the gripper unchanged) before
            chunking, as OFT's no-noops datasets do.
        image_pipeline: How frames become images: `resize` (tiny backbone) or `oft` (openvla backbone:
            OFT's JPEG round trip, Lanczos resize and centre crop). Must match the backbone. Frames an
            RLDS file stored as JPEG skip the round trip: they already went through it, as in OFT's training.
        format: `auto` (by what the path holds), `libero_hdf5`, `rlds` or `lerobot`.
    """

    def __init__(self, data: str, tokenizer: str = "rfsq@best", registry_root: str | None = None,
                 cameras: list[str] | None = None, image_size: int = 64, use_object_pos: bool = False,
                 chunk_len: int = 8, val_fraction: float = 0.1, seed: int = 0, batch_size: int = 32,
                 num_workers: int = 0, drop_noops: bool = False, image_pipeline: str = "resize",
                 format: str = "auto") -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r} is not one of {FORMATS}")
        self.data, self.format, self.tokenizer_name, self.registry_root = data, format, tokenizer, registry_root
        self.cameras = list(cameras or ["agentview_rgb"])
        self.image_size, self.use_object_pos, self.chunk_len = image_size, use_object_pos, chunk_len
        self.val_fraction, self.seed = val_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.drop_noops, self.image_pipeline = drop_noops, image_pipeline
        self.tokenizer: TokenizerBundle | None = None
        self.train_set: VLAChunkDataset | None = None
        self.val_set: VLAChunkDataset | None = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.data, self.format, drop_noops=self.drop_noops)
        return self._fingerprint

    def load_tokenizer(self) -> TokenizerBundle:
        if self.tokenizer is None:
            model, normalizer, artifact = load_tokenizer(self.tokenizer_name, Registry(self.registry_root))
            if model.chunk_len != self.chunk_len:
                raise RsdError(f"data.chunk_len={self.chunk_len} but tokenizer {artifact.spec} has "
                               f"chunk_len={model.chunk_len}")
            self.tokenizer = TokenizerBundle(model.requires_grad_(False), normalizer, artifact.spec)
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tokenizer = self.load_tokenizer()
        episodes = read_source(self.data, self.format, image_keys=self.cameras, require_images=True,
                               drop_noops=self.drop_noops)
        if self.use_object_pos:
            lacking = [e.source for e in episodes if e.object_pos is None]
            if lacking:
                raise RsdError(f"data.use_object_pos is true but {lacking[0]} has no obs/object_pos "
                               f"({len(lacking)} demos lack it)")
        train_ids, val_ids = split_episodes(len(episodes), self.val_fraction, self.seed)
        def subset(ids: list[int]) -> VLAChunkDataset:
            return VLAChunkDataset([episodes[i] for i in ids], self.cameras, self.chunk_len, tokenizer,
                                   self.use_object_pos)

        self.train_set, self.val_set = subset(train_ids), subset(val_ids)
        self.num_episodes = (len(train_ids), len(val_ids))

    def camera_size(self) -> int:
        """Side of the demos' frames as rendered (before resizing to image_size): what eval must render."""
        if self.train_set is None:
            raise RuntimeError("VLADataModule.setup() must run before camera_size()")
        frames = self.train_set.episodes[0].images[self.cameras[0]]  # (N, S0, S0, 3)
        return int(frames.shape[1])

    def state_stats(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of `proprio` or `object_pos` over the training episodes."""
        if self.train_set is None:
            raise RuntimeError("VLADataModule.setup() must run before state_stats()")
        values = np.concatenate([getattr(e, key) for e in self.train_set.episodes])
        return torch.from_numpy(values.mean(0)).float(), torch.from_numpy(values.std(0)).float()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: VLAChunkDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("VLADataModule.setup() must run before its dataloaders")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=Collate(self.image_size, self.image_pipeline),
                          persistent_workers=self.num_workers > 0)
