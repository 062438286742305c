"""LeRobot-format LIBERO datasets (v2.x and v3.0), read with pyarrow and imageio-ffmpeg.

    meta/info.json        codebase_version, fps, features {key: {dtype, shape}}, data_path, video_path
    meta/tasks.parquet    (v3) task strings and their task_index;  meta/tasks.jsonl (v2.x)
    meta/episodes/...     (v3) one row per episode: length, video file and from_timestamp per camera;
                          meta/episodes.jsonl (v2.x: one video file per episode and camera)
    data/**/*.parquet     one row per frame: observation.state [8], action [7], timestamp,
                          frame_index, episode_index, task_index; cameras of dtype `image` inline
                          (a struct of PNG/JPEG `bytes`, as HuggingFaceVLA/libero stores them)
    videos/...mp4         cameras of dtype `video` (lerobot/libero: AV1), several episodes per file in v3

LIBERO's LeRobot datasets (HuggingFaceVLA/libero, lerobot/libero, physical-intelligence/libero) were
converted from OpenVLA's RLDS files: frames upright (LeRobot's LIBERO env rotates its renders 180 deg
to match), `observation.state` = eef pos, eef axis-angle, gripper qpos, actions LIBERO's own (gripper
-1 open / +1 close), no-op steps already removed. Episodes come back in rsd_pl's conventions
(`Episode`): frames rotated back to the render orientation the HDF5 files use. physical-intelligence's
older key names (`image`, `wrist_image`, `state`, `actions`) are read too.

A video's frames are decoded once per file, in order, with imageio-ffmpeg's ffmpeg (which carries the
AV1 decoder dav1d); step t of an episode is the frame at `from_timestamp + timestamp[t]`. Decoded
frames stay in memory: 2 cameras x 256 px x 3 bytes is 393 KB a step, 108 GB for the 273,465 steps
of lerobot/libero's four suites (about a quarter of that per suite): train on one suite per machine
of that size, or with fewer cameras.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsd_pl.data.libero_hdf5 import ACTION_DIM, Episode
from rsd_pl.errors import RsdError

# rsd_pl camera name -> the LeRobot keys LIBERO datasets use for it, in order of preference.
CAMERAS = {"agentview_rgb": ("observation.images.image", "observation.images.agentview", "image"),
           "eye_in_hand_rgb": ("observation.images.image2", "observation.images.wrist_image", "wrist_image")}
STATE_KEYS = ("observation.state", "state")
ACTION_KEYS = ("action", "actions")


def is_lerobot_dir(path: Path) -> bool:
    return path.is_dir() and (path / "meta" / "info.json").is_file()


def _info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RsdError(f"{path}: not a readable LeRobot info.json ({error})") from error
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise RsdError(f"{path}: lacks {key!r} (not a LeRobot dataset's meta/info.json?)")
    return info


def lerobot_files(path: str | Path) -> list[Path]:
    """meta/*, the data tables and the videos of a LeRobot dataset (sorted): what its fingerprint covers."""
    root = Path(path)
    if not is_lerobot_dir(root):
        raise RsdError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    _info(root)
    files = sorted(p for p in (root / "meta").rglob("*") if p.is_file())
    data = sorted((root / "data").rglob("*.parquet"))
    if not data:
        raise RsdError(f"{root}: a LeRobot dataset without data/**/*.parquet tables")
    return files + data + sorted((root / "videos").rglob("*.mp4"))


def _read_table(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as error:  # pyarrow's ArrowInvalid and friends: the message names the problem
        raise RsdError(f"{path}: not a readable parquet table ({error})") from error


def _pick(columns: Sequence[str], candidates: Sequence[str], what: str, where: Path) -> str:
    for key in candidates:
        if key in columns:
            return key
    raise RsdError(f"{where}: no {what} column (looked for {list(candidates)}; found {sorted(columns)})")


def _tasks(root: Path) -> dict[int, str]:
    v3, v2 = root / "meta" / "tasks.parquet", root / "meta" / "tasks.jsonl"
    if v3.is_file():
        table = _read_table(v3).to_pydict()
        text = next((k for k in ("task", "__index_level_0__") if k in table), None)
        if text is None or "task_index" not in table:
            raise RsdError(f"{v3}: needs columns task and task_index (found {sorted(table)})")
        return {int(i): str(t) for i, t in zip(table["task_index"], table[text], strict=True)}
    if v2.is_file():
        rows = [json.loads(line) for line in v2.read_text().splitlines() if line.strip()]
        return {int(r["task_index"]): str(r["task"]) for r in rows}
    raise RsdError(f"{root}/meta: no tasks.parquet (v3) or tasks.jsonl (v2)")


def _episode_meta(root: Path) -> dict[int, dict]:
    """episode_index -> its metadata row (v3: meta/episodes/**/*.parquet; v2: meta/episodes.jsonl)."""
    rows: list[dict] = []
    tables = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if tables:
        for path in tables:
            table = _read_table(path).to_pydict()
            rows += [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
    elif (root / "meta" / "episodes.jsonl").is_file():
        text = (root / "meta" / "episodes.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {int(r["episode_index"]): r for r in rows}


def read_lerobot(path: str | Path, image_keys: Sequence[str] | None = None,
                 require_images: bool = False) -> list[Episode]:
    """Every episode of a LeRobot dataset folder, in episode order (`Episode`, rsd_pl's conventions)."""
    root = Path(path)
    files = lerobot_files(root)
    info = _info(root)
    features = info["features"]
    available = {camera: key for camera, keys in CAMERAS.items() for key in keys[::-1]
                 if key in features and features[key].get("dtype") in ("video", "image")}
    wanted = list(available) if image_keys is None else list(image_keys)
    missing = [k for k in wanted if k not in available]
    if missing or (require_images and not wanted):
        cams = sorted(k for k, f in features.items() if f.get("dtype") in ("video", "image"))
        raise RsdError(f"{root}/meta/info.json: no camera for {missing or list(CAMERAS)} (rsd_pl camera -> "
                       f"LeRobot keys: {CAMERAS}; the dataset has {cams})")
    tasks, meta = _tasks(root), _episode_meta(root)
    steps = _steps_by_episode([p for p in files if p.suffix == ".parquet" and "data" in p.relative_to(root).parts[:1]],
                              [available[c] for c in wanted if features[available[c]]["dtype"] == "image"])
    episodes = []
    for index in sorted(steps):
        columns, where = steps[index]
        n = len(columns["action"])
        task_ids = set(columns["task_index"]) if "task_index" in columns else set()
        if len(task_ids) != 1 or next(iter(task_ids)) not in tasks:
            raise RsdError(f"{where}: episode {index} has task_index {sorted(task_ids)}, not one task of meta/tasks")
        images = {c: _decode_images(columns[available[c]], f"{where}: episode {index} {available[c]}")
                  for c in wanted if features[available[c]]["dtype"] == "image"}
        attrs = {"num_samples": n, "episode_index": index, "timestamps": columns["timestamp"]}
        episode = Episode(f"{root}:episode_{index}", tasks[next(iter(task_ids))].strip(),
                          np.asarray(columns["action"], dtype=np.float32), np.asarray(columns["state"], np.float32),
                          images, None, attrs)
        episodes.append(episode)
    videos = [c for c in wanted if features[available[c]]["dtype"] == "video"]
    if videos:
        _attach_videos(root, info, meta, episodes, {c: available[c] for c in videos})
    for episode in episodes:
        episode.attrs.pop("timestamps")
    return episodes


def _steps_by_episode(tables: list[Path], image_columns: list[str]) -> dict[int, tuple[dict, Path]]:
    """episode_index -> ({action, state, timestamp, task_index, image columns...} in frame order, a table)."""
    grouped: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    where: dict[int, Path] = {}
    for path in tables:
        table = _read_table(path)
        names = table.column_names
        action, state = _pick(names, ACTION_KEYS, "action", path), _pick(names, STATE_KEYS, "observation.state", path)
        for key in ("episode_index", "frame_index", "timestamp", *image_columns):
            if key not in names:
                raise RsdError(f"{path}: no {key} column (found {sorted(names)})")
        wanted = {"action": action, "state": state, "episode_index": "episode_index", "frame_index": "frame_index",
                  "timestamp": "timestamp", **({"task_index": "task_index"} if "task_index" in names else {}),
                  **{c: c for c in image_columns}}
        data = {ours: table.column(theirs).to_pylist() for ours, theirs in wanted.items()}
        for row in range(table.num_rows):
            episode = int(data["episode_index"][row])
            where.setdefault(episode, path)
            for key, values in data.items():
                grouped[episode][key].append(values[row])
    out = {}
    for episode, columns in grouped.items():
        order = np.argsort(columns["frame_index"], kind="stable")
        columns = {k: [v[i] for i in order] for k, v in columns.items()}
        for key, width in (("action", ACTION_DIM), ("state", 8)):
            array = np.asarray(columns[key], dtype=np.float32)
            if array.ndim != 2 or array.shape[1] != width:
                raise RsdError(f"{where[episode]}: episode {episode}'s {key} has shape {array.shape}; "
                               f"expected (N, {width})")
            columns[key] = array
        columns["timestamp"] = np.asarray(columns["timestamp"], dtype=np.float64)
        out[episode] = (columns, where[episode])
    return out


def _decode_images(cells: list, where: str) -> np.ndarray:
    """Inline image cells ({bytes, path} structs of PNG / JPEG) -> uint8 (N, H, W, 3), render orientation."""
    from PIL import Image

    frames = []
    for t, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise RsdError(f"{where}: step {t} has no image bytes")
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.ascontiguousarray(np.stack(frames)[:, ::-1, ::-1])


def _video_path(root: Path, info: dict, key: str, index: int, row: dict) -> tuple[Path, float]:
    """The video file holding episode `index`'s frames of camera `key`, and the episode's start in it (s)."""
    template = info.get("video_path")
    if not template:
        raise RsdError(f"{root}/meta/info.json: camera {key} is a video but info.json has no video_path")
    chunk_key = f"videos/{key}/chunk_index"
    if chunk_key in row:  # v3: several episodes per file
        name = template.format(video_key=key, chunk_index=int(row[chunk_key]),
                               file_index=int(row[f"videos/{key}/file_index"]))
        return root / name, float(row[f"videos/{key}/from_timestamp"])
    chunk = index // int(info.get("chunks_size", 1000))  # v2.x: one file per episode
    return root / template.format(episode_chunk=chunk, video_key=key, episode_index=index), 0.0


def _attach_videos(root: Path, info: dict, meta: dict[int, dict], episodes: list[Episode],
                   cameras: dict[str, str]) -> None:
    import imageio_ffmpeg

    fps = float(info["fps"])
    for camera, key in cameras.items():
        by_file: dict[Path, list[tuple[Episode, np.ndarray]]] = defaultdict(list)
        for episode in episodes:
            index = episode.attrs["episode_index"]
            file, start = _video_path(root, info, key, index, meta.get(index, {}))
            frame_ids = np.rint((start + episode.attrs["timestamps"]) * fps).astype(np.int64)
            by_file[file].append((episode, frame_ids))
        for file, wanted in by_file.items():
            if not file.is_file():
                raise RsdError(f"{file}: video of {key} not found (episode {wanted[0][0].attrs['episode_index']})")
            last = max(int(ids.max()) for _, ids in wanted)
            frames: dict[int, np.ndarray] = {}
            needed = {int(i) for _, ids in wanted for i in ids}
            reader, decoded = imageio_ffmpeg.read_frames(str(file), pix_fmt="rgb24"), 0
            try:
                meta_info = next(reader)
                width, height = meta_info["size"]
                for i, raw in enumerate(reader):
                    decoded = i + 1
                    if i in needed:
                        frames[i] = np.frombuffer(raw, np.uint8).reshape(height, width, 3)[::-1, ::-1]
                    if i >= last:
                        break
            except (OSError, RuntimeError, StopIteration) as error:
                raise RsdError(f"{file}: not a readable video ({error})") from error
            finally:
                reader.close()
            for episode, ids in wanted:
                absent = [int(i) for i in ids if int(i) not in frames]
                if absent:
                    raise RsdError(f"{file}: episode {episode.attrs['episode_index']} has {len(ids)} steps but the "
                                   f"video of {key} has {decoded} frames "
                                   f"(needs frame {absent[0]}): the video is shorter than its episode")
                episode.images[camera] = np.ascontiguousarray(np.stack([frames[int(i)] for i in ids]))
