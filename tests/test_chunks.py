"""Action chunks: OFT padding, deterministic episode split, the phase-1 DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd_pl.data.chunks import ActionChunkDataset, action_chunk, chunk_indices, split_episodes
from rsd_pl.data.libero_hdf5 import read_episodes
from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.data.synthetic import write_synthetic_demos
from rsd_pl.errors import RsdError
from rsd_pl.lit.action_data import ActionChunkDataModule


def test_chunk_indices_cover_every_step():
    assert chunk_indices([3, 2]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_action_chunk_pads_with_last_action():
    actions = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    np.testing.assert_array_equal(action_chunk(actions, 1, 4), actions[1:5])
    tail = action_chunk(actions, 8, 4)
    np.testing.assert_array_equal(tail, actions[[8, 9, 9, 9]])
    torch.testing.assert_close(action_chunk(torch.from_numpy(actions), 8, 4), torch.from_numpy(tail))
    with pytest.raises(IndexError):
        action_chunk(actions, 10, 4)


def test_split_is_deterministic_and_disjoint():
    train, val = split_episodes(20, 0.2, seed=3)
    assert (train, val) == split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and sorted(train + val) == list(range(20))
    assert split_episodes(20, 0.2, seed=4) != (train, val)
    assert len(split_episodes(3, 0.1, seed=0)[1]) == 1  # at least one val episode
    with pytest.raises(RsdError, match="val_fraction"):
        split_episodes(10, 1.0, seed=0)
    with pytest.raises(RsdError, match="1 episode"):
        split_episodes(1, 0.1, seed=0)


def test_dataset_shapes():
    episodes = [np.zeros((5, 7), np.float32), np.ones((3, 7), np.float32)]
    dataset = ActionChunkDataset(episodes, chunk_len=8)
    assert len(dataset) == 8 and dataset[0].shape == (8, 7) and dataset[0].dtype == torch.float32
    assert (dataset[7] == 1).all()


def test_datamodule_fits_normalizer_on_train_split_only(synthetic_demo_file):
    dm = ActionChunkDataModule(str(synthetic_demo_file), val_fraction=0.25, seed=1, batch_size=32)
    dm.setup("fit")
    episodes = read_episodes(str(synthetic_demo_file), image_keys=[])
    train_ids, val_ids = split_episodes(len(episodes), 0.25, 1)
    expected = ActionNormalizer.fit(np.concatenate([episodes[i].actions for i in train_ids]))
    np.testing.assert_array_equal(dm.normalizer.q99, expected.q99)
    assert len(dm.val_set) == sum(len(episodes[i]) for i in val_ids)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (32, 8, 7) and batch[..., :6].abs().max() <= 1.0
    assert set(batch[..., 6].unique().tolist()) <= {-1.0, 1.0}  # gripper left as is


def test_fingerprint_follows_contents(tmp_path, synthetic_demo_file):
    first = ActionChunkDataModule(str(synthetic_demo_file)).fingerprint()
    assert first == ActionChunkDataModule(str(synthetic_demo_file)).fingerprint() and len(first) == 16
    other = write_synthetic_demos(tmp_path / synthetic_demo_file.name, num_demos=2, seed=5)
    assert ActionChunkDataModule(str(other)).fingerprint() != first


def test_datamodule_missing_file(tmp_path):
    with pytest.raises(RsdError, match="nope.hdf5"):
        ActionChunkDataModule(str(tmp_path / "nope.hdf5")).setup("fit")
