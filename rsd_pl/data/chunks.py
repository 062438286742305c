"""Action chunks over episodes (T = chunk_len steps), padded at episode ends the way OpenVLA-OFT does.

A sample at step `t` of an episode with `N` actions is `actions[t : t + T]`. Every step
`t = 0 .. N-1` starts a sample. Near the end, where `t + T > N`, the future index is clamped to
the last step, so the chunk is padded by repeating the last action (OFT builds its chunk
indices as `min(t + k, N - 1)`). In LIBERO the last action is usually a hold with the gripper
closed or open, so the padding reads as "stay there".

The functions here are shared by the phase-1 (actions only) and phase-2 (observations + actions)
data pipelines: `chunk_indices`, `action_chunk`, `split_episodes`, `ActionChunkDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rsd_pl.errors import RsdError


def chunk_indices(episode_lengths: Sequence[int]) -> list[tuple[int, int]]:
    """All samples `(episode, t)`: one per step of every episode, in order."""
    return [(episode, t) for episode, length in enumerate(episode_lengths) for t in range(int(length))]


def chunk_steps(num_steps: int, t: int, chunk_len: int) -> np.ndarray:
    """Indices `min(t + k, N - 1)` for k = 0..T-1 (OFT's padding by the last action); (T,) int64."""
    if not 0 <= t < num_steps:
        raise IndexError(f"step {t} outside an episode of {num_steps} steps")
    return np.minimum(np.arange(t, t + chunk_len), num_steps - 1)


def action_chunk(
    actions: np.ndarray | torch.Tensor, t: int, chunk_len: int
) -> np.ndarray | torch.Tensor:
    """`actions (N, D)` -> the chunk `(T, D)` starting at step `t`, padded with the last action."""
    steps = chunk_steps(actions.shape[0], t, chunk_len)
    if isinstance(actions, torch.Tensor):
        return actions[torch.from_numpy(steps)]
    return actions[steps]


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of episode ids into (train, val); both sorted.

    `round(n * val_fraction)` episodes go to validation (at least 1 when `val_fraction > 0`), drawn
    with `numpy.random.default_rng(seed)`. The same (n, fraction, seed) always gives the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise RsdError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(n_episodes * val_fraction)) if val_fraction > 0 else 0
    if n_episodes - n_val < 1:
        raise RsdError(
            f"{n_episodes} episode(s) cannot be split with val_fraction={val_fraction}: "
            "need at least one training and one validation episode"
        )
    order = np.random.default_rng(seed).permutation(n_episodes)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class ActionChunkDataset(Dataset):
    """Every chunk of the given episodes, precomputed: item `i` is a float32 tensor `(T, D)`.

    `episodes` are per-episode action arrays `(N_i, D)`, already normalised if the caller wants
    normalised chunks (normalisation is per element, so it commutes with chunking).
    """

    def __init__(self, episodes: Sequence[np.ndarray], chunk_len: int) -> None:
        if chunk_len < 1:
            raise RsdError(f"chunk_len must be >= 1, got {chunk_len}")
        if not episodes:
            raise RsdError("ActionChunkDataset: no episodes")
        self.chunk_len = chunk_len
        self.index = chunk_indices([len(actions) for actions in episodes])
        chunks = [action_chunk(np.asarray(episodes[e]), t, chunk_len) for e, t in self.index]
        self.chunks = torch.from_numpy(np.stack(chunks).astype(np.float32))  # (S, T, D)

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.chunks[i]  # (T, D)
