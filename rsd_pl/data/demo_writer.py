"""Writing LIBERO-format demo files (the schema in `rsd_pl.data.libero_hdf5`) so that a kill at any
moment loses at most the demo being recorded and never the file.

HDF5 is not crash-safe: a process killed while HDF5 flushes its metadata can leave a file no library opens,
with every demo in it. So the task's file is never written in place:

    <out>/<task>_demo.hdf5                 only ever replaced whole (temporary copy + fsync + rename)
    <out>/.<task>_demo.staged/<uuid>.hdf5   one finished demo each, renamed into place when complete

`add_demo` writes a staged file; leaving the writer (normally, on an exception, or at the next start after
a kill) folds the staged demos into a copy of the task's file and renames it over the old one. A kill
during the fold leaves the old file and the staged demos, folded again next time; the names of the last
fold are kept in the file (`data.attrs["rsd_last_fold"]`), so a kill between the rename and the removal of
the staged files never adds a demo twice.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np

from rsd_pl.data.libero_hdf5 import IMAGE_KEYS, _check_actions, _complete_demo_keys, _open
from rsd_pl.durable import disk_full_error, fsync_path, is_disk_full
from rsd_pl.errors import RsdError

STAGED_DEMO = "demo"  # the group of a staged file


class DemoWriter:
    """Creates or appends to one LIBERO-format file (one task per file, as the official datasets).

    Each demo is durable once `add_demo` returns (a staged file); the task's file holds it after the
    writer is left. An interrupted collection keeps every finished demo and a rerun appends the rest.
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
        self.staging = self.path.parent / f".{self.path.stem}.staged"
        self._entered = False
        self._existing: list[dict] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._next_index = 0

    def check_existing(self) -> None:
        """Read-only: RsdError if the file exists but is corrupted or has another schema (nothing is written)."""
        if self.path.exists():
            with _open(self.path) as f:
                if "data" in f and "env_args" in f["data"].attrs:
                    self._check_same_schema(f["data"])

    def __enter__(self) -> DemoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.fold-*"):  # a fold killed before its rename
            stale.unlink()
        self.check_existing()
        self._fold()  # staged demos of a killed run; also creates the file with its header
        self._load_existing()
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        if self._entered:
            self._entered = False
            self._fold()

    def _check_same_schema(self, data: h5py.Group) -> None:
        for key in ("env_name", "bddl_file_name", "env_args"):
            old = data.attrs.get(key)
            if old is not None and str(old) != self.header[key]:
                raise RsdError(
                    f"{self.path}: exists with a different {key} ({old!s:.200} != {self.header[key]:.200}); "
                    "refusing to append. Use another output path or move the file away."
                )

    def _load_existing(self) -> None:
        with _open(self.path) as f:
            data = f["data"]
            keys = _complete_demo_keys(data)
            self._existing = [dict(data[k].attrs) for k in keys]
            self._next_index = 1 + max([int(k.split("_", 1)[1]) for k in keys], default=-1)
            if keys:
                obs = data[keys[0]]["obs"]
                self._shapes = {k: tuple(obs[k].shape[1:]) for k in IMAGE_KEYS if k in obs}

    def existing_demos(self) -> list[dict]:
        """Attributes of the complete demos written so far (in the file and staged)."""
        self._require_entered()
        return list(self._existing)

    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-camera frame shape of the demos already written (to refuse mixing sizes)."""
        self._require_entered()
        return dict(self._shapes)

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("DemoWriter must be used as a context manager")

    def add_demo(self, *, actions: np.ndarray, states: np.ndarray, robot_states: np.ndarray,
                 rewards: np.ndarray, dones: np.ndarray, obs: dict[str, np.ndarray],
                 attrs: dict | None = None) -> str:
        """Stage one demo (durable when this returns); the key it gets in the file is returned."""
        self._require_entered()
        _check_actions(np.asarray(actions), f"{self.path}:new demo")
        new_shapes = {k: tuple(np.asarray(v).shape[1:]) for k, v in obs.items() if k in IMAGE_KEYS}
        for key, shape in self._shapes.items():
            if key in new_shapes and new_shapes[key] != shape:
                raise RsdError(f"{self.path}: has {key} frames of shape {shape}, new demo has {new_shapes[key]}")
        all_attrs = dict(attrs or {})
        if len(states):
            all_attrs["init_state"] = np.asarray(states[0])
        all_attrs["num_samples"] = len(actions)
        self.staging.mkdir(exist_ok=True)
        name = f"{len(self._existing):06d}-{uuid.uuid4().hex[:12]}.hdf5"  # fold order = staging order
        tmp = self.staging / f".{name}.tmp"
        try:
            with h5py.File(tmp, "w") as f:
                _write_demo(f.create_group(STAGED_DEMO), actions, states, robot_states, rewards, dones, obs,
                            all_attrs)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if is_disk_full(error):
                raise disk_full_error(self.path, f"its {len(self._existing)} earlier demos are kept", error) from error
            raise
        tmp.rename(self.staging / name)
        fsync_path(self.staging)
        self._shapes = self._shapes or new_shapes
        self._existing.append(all_attrs)
        key = f"demo_{self._next_index}"
        self._next_index += 1
        return key

    def _fold(self) -> None:
        """Copy the file, add the staged demos in order, rename the copy over the file, drop the staged files."""
        staged = sorted(self.staging.glob("*.hdf5")) if self.staging.is_dir() else []
        if self.path.exists() and not staged:
            return
        tmp = self.path.parent / f".{self.path.name}.fold-{uuid.uuid4().hex[:8]}"
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as f:
                data = f.require_group("data")
                already = set(json.loads(str(data.attrs.get("rsd_last_fold", "[]"))))
                for key, value in self.header.items():
                    data.attrs[key] = value
                data.attrs["tag"] = "libero-v1"
                _drop_partial_demos(data, self.path)
                folded = [p.name for p in staged if p.name not in already]
                _append_staged(data, [p for p in staged if p.name in folded])
                data.attrs["rsd_last_fold"] = json.dumps([p.name for p in staged])  # all still on disk
                data.attrs["num_demos"] = len(_complete_demo_keys(data))
                data.attrs["total"] = int(sum(data[k].attrs["num_samples"] for k in _complete_demo_keys(data)))
            fsync_path(tmp)
            tmp.replace(self.path)
            fsync_path(self.path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for path in staged:
            path.unlink()
        if self.staging.is_dir():
            shutil.rmtree(self.staging, ignore_errors=True)


def _write_demo(demo: h5py.Group, actions, states, robot_states, rewards, dones, obs: dict, attrs: dict) -> None:
    for name, value in [("actions", actions), ("states", states), ("robot_states", robot_states),
                        ("rewards", rewards), ("dones", dones)]:
        demo.create_dataset(name, data=np.asarray(value))
    obs_group = demo.create_group("obs")
    for name, value in obs.items():
        obs_group.create_dataset(name, data=np.asarray(value))
    for name, value in attrs.items():
        if name != "num_samples":
            demo.attrs[name] = value
    demo.attrs["num_samples"] = attrs["num_samples"]  # written last: the demo is complete


def _append_staged(data: h5py.Group, staged: list[Path]) -> None:
    index = 1 + max([int(k.split("_", 1)[1]) for k in data.keys() if k.startswith("demo_")], default=-1)
    for path in staged:
        with _open(path) as src:
            if STAGED_DEMO not in src or "num_samples" not in src[STAGED_DEMO].attrs:
                raise RsdError(f"{path}: a staged demo without its data (not written by DemoWriter?); "
                               "move it away to continue")
            src.copy(src[STAGED_DEMO], data, name=f"demo_{index}")
        index += 1


def _drop_partial_demos(data: h5py.Group, where: Path) -> None:
    """Demo groups without num_samples (files written in place by older versions, killed mid-demo)."""
    for key in [k for k in data.keys() if k.startswith("demo_") and "num_samples" not in data[k].attrs]:
        print(f"[DemoWriter] {where}: removing partial demo {key} left by an interrupted write")
        del data[key]
