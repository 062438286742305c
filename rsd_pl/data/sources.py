"""Where phases 1 and 2 read demonstrations from: one entry point for every data format.

    libero_hdf5  LIBERO-format HDF5 files: rsd_pl's own demos, the official LIBERO datasets, OpenVLA-OFT's
                 regenerated `*_no_noops.hdf5` files (rsd_pl.data.libero_hdf5)
    rlds         OpenVLA-OFT's RLDS release, a TFDS folder of TFRecord shards (rsd_pl.data.rlds)
    lerobot      a LeRobot v2.x / v3.0 dataset folder (rsd_pl.data.lerobot)

`format: auto` (the default) picks by what the path holds: a folder with `meta/info.json` is LeRobot,
one with `features.json` + `dataset_info.json` (itself or its one version folder) is RLDS, anything
else is HDF5 (a file, a folder of *.hdf5, a glob or a list). Every reader returns `Episode`s in one
convention (actions as LIBERO's, gripper -1 open / +1 close; proprio eef pos, axis-angle, gripper
qpos; frames in LIBERO's render orientation), so statistics, chunking, `drop_noops` and the image
pipelines behave the same whatever the source.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from rsd_pl.data.libero_hdf5 import NOOP_THRESHOLD, Episode, _drop_noops, noop_mask, read_episodes, resolve_demo_files
from rsd_pl.errors import RsdError

FORMATS = ("auto", "libero_hdf5", "rlds", "lerobot")


def detect_format(data: str | os.PathLike | Sequence[str], format: str = "auto") -> str:
    """The concrete format of `data` (`format` unless it is `auto`)."""
    if format not in FORMATS:
        raise RsdError(f"data format {format!r} is not one of {FORMATS}")
    if format != "auto":
        return format
    if isinstance(data, str | os.PathLike):
        from rsd_pl.data.lerobot import is_lerobot_dir
        from rsd_pl.data.rlds import is_rlds_dir

        path = Path(data)
        if is_lerobot_dir(path):
            return "lerobot"
        if is_rlds_dir(path):
            return "rlds"
    return "libero_hdf5"


def source_files(data, format: str = "auto") -> list[Path]:
    """Every file the data is read from (sorted): what its fingerprint covers."""
    kind = detect_format(data, format)
    if kind == "libero_hdf5":
        return resolve_demo_files(data)
    _check_single(data, kind)
    if kind == "rlds":
        from rsd_pl.data.rlds import rlds_files

        return rlds_files(data)
    from rsd_pl.data.lerobot import lerobot_files

    return lerobot_files(data)


def _check_single(data, kind: str) -> None:
    if not isinstance(data, str | os.PathLike):
        raise RsdError(f"data format {kind} reads one dataset folder; got {data!r}")


def read_source(data, format: str = "auto", image_keys: Sequence[str] | None = None, require_images: bool = False,
                drop_noops: bool = False) -> list[Episode]:
    """Every episode of `data` in rsd_pl's conventions (`Episode`), whatever its format.

    `drop_noops` applies OpenVLA-OFT's no-op rule to every format; OFT's RLDS and LeRobot's LIBERO
    datasets were built without the no-op steps, so it finds nothing to drop in them."""
    kind = detect_format(data, format)
    if kind == "libero_hdf5":
        return read_episodes(data, image_keys=image_keys, require_images=require_images, drop_noops=drop_noops)
    _check_single(data, kind)
    if kind == "rlds":
        from rsd_pl.data.rlds import read_rlds as reader
    else:
        from rsd_pl.data.lerobot import read_lerobot as reader
    episodes = reader(data, image_keys=image_keys, require_images=require_images)
    return [_drop_noops(e, noop_mask(e.actions)) for e in episodes] if drop_noops else episodes


def data_fingerprint(data, format: str = "auto", *, drop_noops: bool = False, block_size: int = 1 << 20) -> str:
    """Short sha256 over the names and contents of the files the data is read from (16 hex chars).

    Contents, not mtimes: a copied or re-downloaded file keeps its fingerprint; an edited one does not.
    HDF5 files are named by their file name (the fingerprints of earlier runs stay valid); a dataset
    folder's files by their path inside it, and the format is part of the digest. `drop_noops=True`
    (training on the files minus OFT's no-op steps) is other data, so it adds the rule to the digest.
    """
    kind = detect_format(data, format)
    files = source_files(data, kind)
    digest = hashlib.sha256()
    root = None if kind == "libero_hdf5" else Path(data)
    if root is not None:
        digest.update(f"format:{kind}\0".encode())
    for path in files:
        name = path.name if root is None else path.relative_to(root).as_posix()
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(block_size):
                digest.update(block)
    if drop_noops:
        digest.update(f"\0drop_noops:oft:{NOOP_THRESHOLD!r}".encode())
    return digest.hexdigest()[:16]
