"""Writers of the users' data formats, for the tests: each writes episodes the way its producer does.

- `write_oft_hdf5`: OpenVLA-OFT's `regenerate_libero_dataset.py` (no `data` attributes, no `num_samples`,
  file named after the task, frames as rendered).
- `write_rlds`: OFT's RLDS builder (`modified_libero_rlds`): frames rotated 180 deg and JPEG-encoded
  (TFDS's encoder: quality 95), state = ee_states + gripper_states, instruction from the file name,
  a TFDS folder with `features.json` and `dataset_info.json`.
- `write_lerobot`: LeRobot v3.0 (`lerobot/libero`): upright frames as AV1 video (libsvtav1, crf 30, g 2,
  yuv420p: LeRobot's encoder settings), or as PNG in the table (`HuggingFaceVLA/libero`) with `video=False`;
  v2.1 (one parquet and one video per episode) with `version="v2.1"`.

They take `Episode`s read from a LIBERO-format file (render-orientation frames, OFT's 8-D proprio).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from rsd_pl.data.rlds import encode_example, write_records

LEROBOT_KEYS = {"agentview_rgb": "observation.images.image", "eye_in_hand_rgb": "observation.images.image2"}


def task_file_name(instruction: str) -> str:
    return instruction.replace(" ", "_") + "_demo.hdf5"


def write_oft_hdf5(episodes, folder: Path) -> list[Path]:
    """One `<task>_demo.hdf5` per instruction, in the layout of OFT's regenerated files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for instruction in dict.fromkeys(e.instruction for e in episodes):
        path = folder / task_file_name(instruction)
        with h5py.File(path, "w") as f:
            grp = f.create_group("data")  # OFT writes no attributes here
            for i, e in enumerate(x for x in episodes if x.instruction == instruction):
                demo = grp.create_group(f"demo_{i}")
                obs = demo.create_group("obs")
                obs.create_dataset("gripper_states", data=e.proprio[:, 6:8].astype(np.float64))
                obs.create_dataset("joint_states", data=np.zeros((len(e), 7)))
                obs.create_dataset("ee_states", data=e.proprio[:, :6].astype(np.float64))
                obs.create_dataset("ee_pos", data=e.proprio[:, :3].astype(np.float64))
                obs.create_dataset("ee_ori", data=e.proprio[:, 3:6].astype(np.float64))
                for key, frames in e.images.items():
                    obs.create_dataset(key, data=np.asarray(frames))
                demo.create_dataset("actions", data=e.actions.astype(np.float64))
                demo.create_dataset("states", data=np.zeros((len(e), 9)))
                demo.create_dataset("robot_states", data=np.zeros((len(e), 9)))
                rewards = np.zeros(len(e), np.uint8)
                rewards[-1] = 1
                demo.create_dataset("rewards", data=rewards)
                demo.create_dataset("dones", data=rewards)
        paths.append(path)
    return paths


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tensor(shape, dtype="float32"):
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype, "encoding": "none"}}


def _image(size: int):
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8", "encodingFormat": "jpeg"}}


def _dict(features: dict):
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": features}}


def features_json(size: int) -> dict:
    text = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    steps = _dict({
        "observation": _dict({"image": _image(size), "wrist_image": _image(size), "state": _tensor([8]),
                              "joint_state": _tensor([7])}),
        "action": _tensor([7]), "discount": _tensor([]), "reward": _tensor([]),
        "is_first": _tensor([], "bool"), "is_last": _tensor([], "bool"), "is_terminal": _tensor([], "bool"),
        "language_instruction": text})
    return _dict({"steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                            "sequence": {"feature": steps, "length": "-1"}},
                  "episode_metadata": _dict({"file_path": text})})


def write_rlds(hdf5_files: list[Path], folder: Path, name: str = "libero_synthetic_no_noops",
               shards: int = 2) -> Path:
    """OFT's RLDS builder run over OFT-style no-noops HDF5 files: a TFDS folder `<folder>/<name>/1.0.0`."""
    from rsd_pl.data.libero_hdf5 import read_episodes

    root = folder / name / "1.0.0"
    root.mkdir(parents=True, exist_ok=True)
    records, size = [], None
    for path in hdf5_files:
        for e in read_episodes(path):
            n, size = len(e), e.images["agentview_rgb"].shape[1]
            records.append(encode_example({
                "steps/observation/image": [_jpeg(f[::-1, ::-1]) for f in e.images["agentview_rgb"]],
                "steps/observation/wrist_image": [_jpeg(f[::-1, ::-1]) for f in e.images["eye_in_hand_rgb"]],
                "steps/observation/state": e.proprio.reshape(-1).tolist(),
                "steps/observation/joint_state": np.zeros(7 * n).tolist(),
                "steps/action": e.actions.reshape(-1).tolist(),
                "steps/discount": [1.0] * n,
                "steps/reward": [float(t == n - 1) for t in range(n)],
                "steps/is_first": [int(t == 0) for t in range(n)],
                "steps/is_last": [int(t == n - 1) for t in range(n)],
                "steps/is_terminal": [int(t == n - 1) for t in range(n)],
                "steps/language_instruction": [e.instruction.encode()] * n,
                "episode_metadata/file_path": [str(path).encode()],
            }))
    (root / "features.json").write_text(json.dumps(features_json(size)))
    lengths = [len(part) for part in np.array_split(np.arange(len(records)), shards)]
    (root / "dataset_info.json").write_text(json.dumps({"name": name, "version": "1.0.0", "fileFormat": "tfrecord",
                                                        "splits": [{"name": "train", "shardLengths": lengths}]}))
    start = 0
    for i, count in enumerate(lengths):
        write_records(root / f"{name}-train.tfrecord-{i:05d}-of-{shards:05d}", records[start:start + count])
        start += count
    return folder / name


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libsvtav1", pix_fmt_out="yuv420p",
                                         output_params=["-g", "2", "-crf", "30"], macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _png(frame: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_lerobot(episodes, folder: Path, fps: int = 10, video: bool = True, version: str = "v3.0",
                  episodes_per_video: int = 3) -> Path:
    """A LeRobot dataset of `episodes` (upright frames); v3.0 packs several episodes per data and video file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    size = episodes[0].images["agentview_rgb"].shape[1]
    tasks = list(dict.fromkeys(e.instruction for e in episodes))
    dtype = "video" if video else "image"
    features = {"observation.state": {"dtype": "float32", "shape": [8]}, "action": {"dtype": "float32", "shape": [7]},
                "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
                "task_index": {"dtype": "int64", "shape": [1]},
                **{key: {"dtype": dtype, "shape": [size, size, 3]} for key in LEROBOT_KEYS.values()}}
    v3 = version.startswith("v3")
    info = {"codebase_version": version, "robot_type": "panda", "fps": fps, "features": features,
            "total_episodes": len(episodes), "total_frames": int(sum(len(e) for e in episodes)), "chunks_size": 1000,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3 else
            "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": ("videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3 else
                           "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
            if video else None}
    (folder / "meta").mkdir(exist_ok=True)
    (folder / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    groups = [list(range(i, min(i + episodes_per_video, len(episodes)))) for i in range(0, len(episodes),
                                                                                       episodes_per_video if v3 else 1)]
    meta_rows, index = [], 0
    for file_index, group in enumerate(groups):
        rows: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                                 "episode_index", "index", "task_index")}
        if not video:
            rows.update({key: [] for key in LEROBOT_KEYS.values()})
        streams = {key: [] for key in LEROBOT_KEYS.values()}
        start_s = 0.0
        for ep in group:
            e = episodes[ep]
            n = len(e)
            meta = {"episode_index": ep, "tasks": [e.instruction], "length": n, "data/chunk_index": 0,
                    "data/file_index": file_index, "dataset_from_index": index, "dataset_to_index": index + n}
            for t in range(n):
                rows["observation.state"].append(e.proprio[t].tolist())
                rows["action"].append(e.actions[t].tolist())
                rows["timestamp"].append(t / fps)
                rows["frame_index"].append(t)
                rows["episode_index"].append(ep)
                rows["index"].append(index + t)
                rows["task_index"].append(tasks.index(e.instruction))
            for camera, key in LEROBOT_KEYS.items():
                upright = np.asarray(e.images[camera])[:, ::-1, ::-1]
                if video:
                    streams[key].append(upright)
                    meta.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": file_index,
                                 f"videos/{key}/from_timestamp": start_s,
                                 f"videos/{key}/to_timestamp": start_s + n / fps})
                else:
                    rows[key] += [_png(f) for f in upright]
            start_s += n / fps
            index += n
            meta_rows.append(meta)
            if not v3:  # v2.1: one table and one video per episode
                _flush(folder, info, rows, streams, video, fps, ep, v3)
                rows = {k: [] for k in rows}
                streams = {key: [] for key in LEROBOT_KEYS.values()}
        if v3:
            _flush(folder, info, rows, streams, video, fps, file_index, v3)
    if v3:
        table = {k: [row[k] for row in meta_rows] for k in meta_rows[0]}
        (folder / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), folder / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
        tasks_table = pa.table({"task_index": list(range(len(tasks))), "task": tasks})
        pq.write_table(tasks_table, folder / "meta" / "tasks.parquet")
    else:
        lines = [json.dumps({"episode_index": r["episode_index"], "tasks": r["tasks"], "length": r["length"]})
                 for r in meta_rows]
        (folder / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "meta" / "tasks.jsonl").write_text(
            "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(tasks)) + "\n")
    return folder


def _flush(folder: Path, info: dict, rows: dict, streams: dict, video: bool, fps: int, index: int, v3: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = {"chunk_index": 0, "file_index": index} if v3 else {"episode_chunk": 0, "episode_index": index}
    path = folder / info["data_path"].format(**fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    if video:
        for key, parts in streams.items():
            _write_video(folder / info["video_path"].format(video_key=key, **fields), np.concatenate(parts), fps)
