"""LIBERO-format demonstration files: read, write, validate.

The schema is the one of upstream LIBERO's `scripts/create_dataset.py`, so files written here read
back with any tool that reads the official datasets:

    data                      attrs: env_name, problem_info (JSON, has language_instruction),
                                     bddl_file_name, env_args (JSON), num_demos, total, tag
    data/demo_i               attrs: num_samples (written last: marks the demo complete), init_state, ...
    data/demo_i/actions       (N, 7) float   OSC_POSE deltas in [-1, 1], gripper -1 open / +1 close
    data/demo_i/states        (N, S) float   flattened MuJoCo states
    data/demo_i/robot_states  (N, R) float
    data/demo_i/rewards       (N,)   dones (N,)
    data/demo_i/obs/agentview_rgb, eye_in_hand_rgb  (N, H, W, 3) uint8, as LIBERO renders them (upside down)
    data/demo_i/obs/gripper_states (N, 2), joint_states (N, 7), ee_states (N, 6), ee_pos (N, 3), ee_ori (N, 3)
    data/demo_i/obs/object_pos (N, 6)  rsd_pl extra: privileged positions of the goal's object and target

A demo group without `num_samples` is a partial write (a crash mid-demo) and is never read as data.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rsd_pl.errors import RsdError

ACTION_DIM = 7
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
REQUIRED_DATA_ATTRS = ("env_name", "problem_info", "bddl_file_name", "env_args")


@dataclass
class Episode:
    """One demonstration, fully loaded. Proprio is OFT's 8-D: eef pos, eef axis-angle, gripper qpos."""

    source: str                      # "path/to/file.hdf5:demo_3"
    instruction: str
    actions: np.ndarray              # (N, D) float32
    proprio: np.ndarray              # (N, 8) float32
    images: dict[str, np.ndarray]    # key -> (N, H, W, 3) uint8, as rendered (upside down)
    object_pos: np.ndarray | None    # (N, 6) float32 or None
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


def resolve_demo_files(data: str | Sequence[str]) -> list[Path]:
    """A file, a directory (all *.hdf5 inside) or a glob, or a list of those -> sorted files."""
    specs = [data] if isinstance(data, str | os.PathLike) else list(data)
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(path.glob("*.hdf5"))
        elif any(ch in str(spec) for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(spec)))
        else:
            found = [path]
        if not found:
            raise RsdError(f"no demo files (*.hdf5) found at {spec!r}")
        files += found
    for path in files:
        if not path.is_file():
            raise RsdError(f"{path}: demo file not found")
    return files


def _open(path: Path, mode: str = "r") -> h5py.File:
    try:
        return h5py.File(path, mode)
    except FileNotFoundError as error:
        raise RsdError(f"{path}: demo file not found") from error
    except OSError as error:
        raise RsdError(f"{path}: not a readable HDF5 file (corrupted or partial write?): {error}") from error


def _complete_demo_keys(data: h5py.Group) -> list[str]:
    keys = [k for k in data.keys() if k.startswith("demo_") and "num_samples" in data[k].attrs]
    return sorted(keys, key=lambda k: int(k.split("_", 1)[1]))


def _instruction(data: h5py.Group, path: Path) -> str:
    try:
        info = json.loads(data.attrs["problem_info"])
        return str(info["language_instruction"]).strip()
    except (KeyError, json.JSONDecodeError, TypeError) as error:
        raise RsdError(f"{path}: attribute data.problem_info lacks a JSON 'language_instruction' ({error})") from error


def _check_actions(actions: np.ndarray, where: str) -> None:
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise RsdError(f"{where}/actions has shape {actions.shape}; expected (N, {ACTION_DIM})")
    if len(actions) == 0:
        raise RsdError(f"{where}/actions is empty")
    bad = np.argwhere(~np.isfinite(actions))
    if len(bad):
        step, dim = bad[0]
        raise RsdError(f"{where}/actions has a non-finite value ({actions[step, dim]}) at step {step}, dim {dim}")


def validate_file(path: str | Path) -> None:
    """Check that a file is a complete LIBERO-format demo file; raise RsdError naming what is wrong."""
    path = Path(path)
    with _open(path) as f:
        if "data" not in f:
            raise RsdError(f"{path}: no 'data' group (not a LIBERO demo file)")
        data = f["data"]
        _instruction(data, path)
        demos = _complete_demo_keys(data)
        if not demos:
            raise RsdError(f"{path}: no complete data/demo_*/actions found")
        for key in demos:
            if "actions" not in data[key]:
                raise RsdError(f"{path}: data/{key}/actions is missing")
            _check_actions(np.asarray(data[key]["actions"]), f"{path}:data/{key}")


def _proprio(obs: h5py.Group, where: str) -> np.ndarray:
    missing = [k for k in ("ee_pos", "ee_ori", "gripper_states") if k not in obs]
    if missing:
        raise RsdError(f"{where}/obs lacks {missing} (needed for the 8-D proprio)")
    parts = [np.asarray(obs[k], dtype=np.float32) for k in ("ee_pos", "ee_ori", "gripper_states")]
    return np.concatenate(parts, axis=-1)  # (N, 3 + 3 + 2)


def read_episodes(
    data: str | Sequence[str], image_keys: Sequence[str] | None = None, require_images: bool = False
) -> list[Episode]:
    """Read every complete demo of the given files. `image_keys=None` loads all camera images present."""
    episodes = []
    for path in resolve_demo_files(data):
        with _open(path) as f:
            if "data" not in f:
                raise RsdError(f"{path}: no 'data' group (not a LIBERO demo file)")
            group = f["data"]
            instruction = _instruction(group, path)
            keys = _complete_demo_keys(group)
            if not keys:
                raise RsdError(f"{path}: no complete data/demo_*/actions found")
            for key in keys:
                episodes.append(_read_demo(group[key], f"{path}:data/{key}", instruction, image_keys, require_images))
    return episodes


def _read_demo(demo: h5py.Group, where: str, instruction: str, image_keys, require_images: bool) -> Episode:
    if "actions" not in demo:
        raise RsdError(f"{where}/actions is missing")
    actions = np.asarray(demo["actions"], dtype=np.float32)
    _check_actions(actions, where)
    if "obs" not in demo:
        raise RsdError(f"{where}/obs is missing")
    obs = demo["obs"]
    wanted = [k for k in IMAGE_KEYS if k in obs] if image_keys is None else list(image_keys)
    missing = [k for k in wanted if k not in obs]
    if missing or (require_images and not wanted):
        raise RsdError(f"{where}/obs lacks camera images {missing or list(IMAGE_KEYS)}")
    images = {k: np.asarray(obs[k], dtype=np.uint8) for k in wanted}
    object_pos = np.asarray(obs["object_pos"], dtype=np.float32) if "object_pos" in obs else None
    proprio = _proprio(obs, where)
    for name, array in [("proprio", proprio), *images.items(), ("object_pos", object_pos)]:
        if array is not None and len(array) != len(actions):
            raise RsdError(f"{where}: obs {name} has {len(array)} steps but actions have {len(actions)}")
    attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in demo.attrs.items()}
    return Episode(where, instruction, actions, proprio, images, object_pos, attrs)


class DemoWriter:
    """Creates or appends to one LIBERO-format file (one task per file, as the official datasets).

    Each demo is flushed when added and marked complete by its `num_samples` attribute, written last,
    so an interrupted collection keeps every finished demo and a rerun appends the rest.
    """

    def __init__(self, path: str | Path, *, env_name: str, problem_info: dict, bddl_file_name: str,
                 env_args: dict) -> None:
        self.path = Path(path)
        self.header = {
            "env_name": env_name,
            "problem_info": json.dumps(problem_info, sort_keys=True),
            "bddl_file_name": str(bddl_file_name),
            "env_args": json.dumps(env_args, sort_keys=True),
        }
        self._file: h5py.File | None = None

    def __enter__(self) -> DemoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists()
        self._file = _open(self.path, "a")
        data = self._file.require_group("data")
        if exists and "env_args" in data.attrs:
            self._check_same_schema(data)
        for key, value in self.header.items():
            data.attrs[key] = value
        data.attrs["tag"] = "libero-v1"
        self._drop_partial_demos(data)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _check_same_schema(self, data: h5py.Group) -> None:
        for key in ("env_name", "bddl_file_name", "env_args"):
            old = data.attrs.get(key)
            if old is not None and str(old) != self.header[key]:
                raise RsdError(
                    f"{self.path}: exists with a different {key} ({old!s:.200} != {self.header[key]:.200}); "
                    "refusing to append. Use another output path or move the file away."
                )

    def _drop_partial_demos(self, data: h5py.Group) -> None:
        partial = [k for k in data.keys() if k.startswith("demo_") and "num_samples" not in data[k].attrs]
        for key in partial:
            print(f"[DemoWriter] {self.path}: removing partial demo {key} left by an interrupted write")
            del data[key]

    @property
    def data(self) -> h5py.Group:
        if self._file is None:
            raise RuntimeError("DemoWriter must be used as a context manager")
        return self._file["data"]

    def existing_demos(self) -> list[dict]:
        """Attributes of the complete demos already in the file."""
        return [dict(self.data[k].attrs) for k in _complete_demo_keys(self.data)]

    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-camera frame shape of the demos already in the file (to refuse mixing sizes)."""
        keys = _complete_demo_keys(self.data)
        if not keys:
            return {}
        obs = self.data[keys[0]]["obs"]
        return {k: tuple(obs[k].shape[1:]) for k in IMAGE_KEYS if k in obs}

    def add_demo(self, *, actions: np.ndarray, states: np.ndarray, robot_states: np.ndarray,
                 rewards: np.ndarray, dones: np.ndarray, obs: dict[str, np.ndarray],
                 attrs: dict | None = None) -> str:
        _check_actions(np.asarray(actions), f"{self.path}:new demo")
        new_shapes = {k: tuple(np.asarray(v).shape[1:]) for k, v in obs.items() if k in IMAGE_KEYS}
        for key, shape in self.image_shapes().items():
            if key in new_shapes and new_shapes[key] != shape:
                raise RsdError(f"{self.path}: has {key} frames of shape {shape}, new demo has {new_shapes[key]}")
        data = self.data
        index = 1 + max([int(k.split("_", 1)[1]) for k in data.keys() if k.startswith("demo_")], default=-1)
        key = f"demo_{index}"
        demo = data.create_group(key)
        for name, value in [("actions", actions), ("states", states), ("robot_states", robot_states),
                            ("rewards", rewards), ("dones", dones)]:
            demo.create_dataset(name, data=np.asarray(value))
        obs_group = demo.create_group("obs")
        for name, value in obs.items():
            obs_group.create_dataset(name, data=np.asarray(value))
        for name, value in (attrs or {}).items():
            demo.attrs[name] = value
        if len(states):
            demo.attrs["init_state"] = np.asarray(states[0])
        demo.attrs["num_samples"] = len(actions)  # written last: the demo is complete
        data.attrs["num_demos"] = len(_complete_demo_keys(data))
        data.attrs["total"] = int(sum(data[k].attrs["num_samples"] for k in _complete_demo_keys(data)))
        self._file.flush()
        return key
