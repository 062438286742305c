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

`num_samples` is written last by rsd_pl's writer. OpenVLA-OFT's regenerated `*_no_noops.hdf5` files
(`regenerate_libero_dataset.py`) write no `num_samples` and no `data` attributes at all: a demo without
the attribute is read with the count its arrays agree on, and refused, naming the demo and the arrays,
when they disagree (e.g. a partial write by an older writer). A file without `problem_info` takes its
instruction from its name, by the rule of OFT's RLDS builder (`instruction_from_filename`).

`read_episodes(..., drop_noops=True)` removes OpenVLA-OFT's no-op steps (see `noop_mask`) from every
per-step array, as OFT's `regenerate_libero_dataset.py` does when it builds its `*_no_noops` datasets.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rsd_pl.errors import RsdError

ACTION_DIM = 7
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
REQUIRED_DATA_ATTRS = ("env_name", "problem_info", "bddl_file_name", "env_args")
NOOP_THRESHOLD = 1e-4  # OpenVLA-OFT's is_noop threshold on |xyz, rot|


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


def _demo_order(key: str) -> int:
    return int(key.split("_", 1)[1])


def _complete_demo_keys(data: h5py.Group) -> list[str]:
    """Demos rsd_pl's writer finished (`num_samples` set): what the writer resumes from."""
    keys = [k for k in data.keys() if k.startswith("demo_") and "num_samples" in data[k].attrs]
    return sorted(keys, key=_demo_order)


def _per_step_lengths(demo: h5py.Group) -> dict[str, int]:
    """Length of every per-step array of a demo (actions, states, ..., obs/*), by name."""
    lengths = {}
    for name, item in demo.items():
        if isinstance(item, h5py.Dataset) and item.ndim >= 1:
            lengths[name] = len(item)
        elif name == "obs" and isinstance(item, h5py.Group):
            lengths.update({f"obs/{k}": len(v) for k, v in item.items() if isinstance(v, h5py.Dataset) and v.ndim})
    return lengths


def _readable_demo_keys(data: h5py.Group, path: Path) -> list[str]:
    """Every demo to read: those with `num_samples`, and those without (OFT's regenerated files) whose
    per-step arrays agree on one length. A demo without it whose arrays disagree (or that has no
    actions or no obs) is refused, naming it."""
    keys = sorted((k for k in data.keys() if k.startswith("demo_")), key=_demo_order)
    for key in keys:
        if "num_samples" in data[key].attrs:
            continue
        lengths = _per_step_lengths(data[key])
        missing = [name for name in ("actions", "obs") if name not in data[key]]
        if missing or len(set(lengths.values())) != 1:
            if missing:
                why = f"lacks {missing}"
            else:
                common = Counter(lengths.values()).most_common(1)[0][0]
                odd = ", ".join(f"{name} {n}" for name, n in sorted(lengths.items()) if n != common)
                why = f"per-step arrays of different lengths ({odd} steps; actions and the others {common})"
            raise RsdError(f"{path}:data/{key} has no num_samples attribute and {why}: a partial or damaged "
                           "demo (rerun the collection that wrote it, or delete the group)")
    return keys


def instruction_from_filename(path: str | Path) -> str:
    """The instruction a LIBERO task file's name spells, by the rule of OpenVLA-OFT's RLDS builder:
    drop the `_demo.hdf5` suffix, split on `_`, and start over after any word containing `SCENE`
    (`LIVING_ROOM_SCENE2_put_both_..._basket_demo.hdf5` -> `put both ... basket`)."""
    name = Path(path).name
    stem = name[: -len("_demo.hdf5")] if name.endswith("_demo.hdf5") else Path(name).stem
    words: list[str] = []
    for word in stem.split("_"):
        words = [] if "SCENE" in word else [*words, word]
    if not words:
        raise RsdError(f"{path}: no data.problem_info attribute and no instruction in the file name")
    return " ".join(words)


def demo_attributes(path: str | Path) -> list[dict]:
    """Attributes of the complete demos of one LIBERO-format file, in demo order (no arrays read)."""
    path = Path(path)
    with _open(path) as f:
        if "data" not in f:
            raise RsdError(f"{path}: no 'data' group (not a LIBERO-format demo file)")
        return [dict(f["data"][k].attrs) for k in _readable_demo_keys(f["data"], path)]


def _instruction(data: h5py.Group, path: Path) -> str:
    if "problem_info" not in data.attrs:  # OFT's regenerated files write no data attributes
        return instruction_from_filename(path)
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


def noop_mask(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """Steps to keep (bool [N], True = keep) under OpenVLA-OFT's no-op rule.

    OFT (`experiments/robot/libero/regenerate_libero_dataset.py`, `is_noop`) drops action t when
    (1) the norm of all its dims but the last (xyz + rotation) is below `threshold`, and
    (2) its gripper command (last dim) equals that of the previous *kept* action.
    While nothing has been kept yet (the episode start) only (1) applies.

    Vectorised: after the first kept step, the previous kept action's gripper always equals the
    previous action's gripper (a step is only dropped when its gripper equals the last kept one), so
    (2) reduces to `gripper[t] == gripper[t - 1]`; and a step is kept by a gripper change only after
    some step was kept, which needs an earlier step that moves.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] < 2:
        raise RsdError(f"noop_mask: actions have shape {actions.shape}; expected (N, D) with D >= 2")
    moving = np.linalg.norm(actions[:, :-1], axis=1) >= threshold        # not criterion (1)
    gripper = actions[:, -1]
    changed = np.zeros(len(actions), dtype=bool)
    changed[1:] = gripper[1:] != gripper[:-1]                           # not criterion (2)
    kept_before = np.zeros(len(actions), dtype=bool)
    kept_before[1:] = np.cumsum(moving)[:-1] > 0                         # a previous kept action exists
    return moving | (kept_before & changed)


def validate_file(path: str | Path) -> None:
    """Check that a file is a complete LIBERO-format demo file; raise RsdError naming what is wrong."""
    path = Path(path)
    with _open(path) as f:
        if "data" not in f:
            raise RsdError(f"{path}: no 'data' group (not a LIBERO demo file)")
        data = f["data"]
        _instruction(data, path)
        demos = _readable_demo_keys(data, path)
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
    data: str | Sequence[str], image_keys: Sequence[str] | None = None, require_images: bool = False,
    drop_noops: bool = False,
) -> list[Episode]:
    """Read every complete demo of the given files. `image_keys=None` loads all camera images present.

    `drop_noops=True` keeps only the steps of `noop_mask(actions)` in every per-step array (actions,
    proprio, images, object_pos): step t of each still belongs together, and the observation kept
    with an action is the one recorded before it, as in OFT's regenerated datasets. The number of
    dropped steps is recorded in `episode.attrs["noops_dropped"]` (`attrs["num_samples"]` stays the
    file's count). A demo whose every step is a no-op raises RsdError.
    """
    episodes = []
    for path in resolve_demo_files(data):
        with _open(path) as f:
            if "data" not in f:
                raise RsdError(f"{path}: no 'data' group (not a LIBERO demo file)")
            group = f["data"]
            instruction = _instruction(group, path)
            keys = _readable_demo_keys(group, path)
            if not keys:
                raise RsdError(f"{path}: no complete data/demo_*/actions found")
            for key in keys:
                episode = _read_demo(group[key], f"{path}:data/{key}", instruction, image_keys, require_images,
                                     drop_noops)
                episodes.append(episode)
    return episodes


def _read_demo(demo: h5py.Group, where: str, instruction: str, image_keys, require_images: bool,
               drop_noops: bool = False) -> Episode:
    if "actions" not in demo:
        raise RsdError(f"{where}/actions is missing")
    stored = np.asarray(demo["actions"])  # the file's dtype (float64 in the official files): OFT's test runs on it
    actions = stored.astype(np.float32)
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
    attrs.setdefault("num_samples", len(actions))  # OFT's regenerated files: the count the arrays agree on
    episode = Episode(where, instruction, actions, proprio, images, object_pos, attrs)
    return _drop_noops(episode, noop_mask(stored)) if drop_noops else episode


def _drop_noops(episode: Episode, keep: np.ndarray) -> Episode:
    """The episode restricted to the steps `keep`, in every per-step array (same mask for all)."""
    if not keep.any():
        raise RsdError(f"{episode.source}: every one of its {len(keep)} steps is a no-op "
                       f"(|xyz,rot| < {NOOP_THRESHOLD:g}); nothing is left with drop_noops")
    return Episode(
        source=episode.source,
        instruction=episode.instruction,
        actions=episode.actions[keep],
        proprio=episode.proprio[keep],
        images={k: v[keep] for k, v in episode.images.items()},
        object_pos=None if episode.object_pos is None else episode.object_pos[keep],
        attrs={**episode.attrs, "noops_dropped": int((~keep).sum())},
    )
