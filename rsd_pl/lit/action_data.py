"""`ActionChunkDataModule`: normalised action chunks of demonstrations (phase 1), from any data format of
`rsd_pl.data.sources` (LIBERO-format HDF5, OpenVLA-OFT's RLDS, LeRobot)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from rsd_pl.data.chunks import ActionChunkDataset, split_episodes
from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.data.sources import FORMATS, data_fingerprint, read_source, source_files

__all__ = ["ActionChunkDataModule", "data_fingerprint"]

ACTION_DIM = 7


class ActionChunkDataModule(L.LightningDataModule):
    """Action chunks (T steps x 7 dims) of demonstrations, normalised with train-split statistics.

    Episodes are split into train / val by episode (deterministic in `seed`). The `ActionNormalizer`
    is fitted on the train episodes only; items are normalised chunks, float32 `[T, 7]`, padded at
    episode ends by repeating the last action (OpenVLA-OFT's chunking).

    Args:
        data: A LIBERO-format HDF5 demo file, a directory of them (all *.hdf5), or a glob; or the folder
            of an RLDS dataset (OpenVLA-OFT's release) or of a LeRobot dataset.
        format: `auto` (by what the path holds), `libero_hdf5`, `rlds` or `lerobot`.
        chunk_len: Steps per action chunk (T). Must equal the model's chunk_len.
        val_fraction: Fraction of episodes held out for validation (at least one episode).
        seed: Seed of the train/val episode split.
        batch_size: Chunks per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        drop_noops: Drop OpenVLA-OFT's no-op steps (|xyz,rot| < 1e-4 with the gripper unchanged) before
            chunking, as OFT's no-noops datasets do.
    """

    def __init__(
        self,
        data: str,
        chunk_len: int = 8,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        drop_noops: bool = False,
        format: str = "auto",
    ) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r} is not one of {FORMATS}")
        self.data, self.format = data, format
        self.chunk_len = chunk_len
        self.val_fraction = val_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_noops = drop_noops
        self.normalizer: ActionNormalizer | None = None
        self.train_set: ActionChunkDataset | None = None
        self.val_set: ActionChunkDataset | None = None
        self._files: list[Path] | None = None
        self._fingerprint: str | None = None

    def files(self) -> list[Path]:
        """The files `data` is read from (sorted)."""
        if self._files is None:
            self._files = source_files(self.data, self.format)
        return self._files

    def fingerprint(self) -> str:
        """Short sha256 of the demo files' names and contents and of drop_noops (the lineage of the data)."""
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.data, self.format, drop_noops=self.drop_noops)
        return self._fingerprint

    def setup(self, stage: str | None = None) -> None:
        if self.normalizer is not None:
            return
        episodes = read_source(self.data, self.format, image_keys=[], drop_noops=self.drop_noops)
        train_ids, val_ids = split_episodes(len(episodes), self.val_fraction, self.seed)
        train_actions = [episodes[i].actions for i in train_ids]
        source = f"{self.data} (train episodes)"
        self.normalizer = ActionNormalizer.fit(np.concatenate(train_actions), ACTION_DIM, source=source)
        self.train_set = ActionChunkDataset([self.normalizer.normalize(a) for a in train_actions], self.chunk_len)
        val_actions = [self.normalizer.normalize(episodes[i].actions) for i in val_ids]
        self.val_set = ActionChunkDataset(val_actions, self.chunk_len)
        self.num_episodes = (len(train_ids), len(val_ids))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: ActionChunkDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("ActionChunkDataModule.setup() must run before its dataloaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
