"""OpenVLA-OFT's RLDS release (`modified_libero_rlds`), read without TensorFlow.

A TFDS dataset directory (`libero_spatial_no_noops/1.0.0/`) holds `dataset_info.json`,
`features.json` and TFRecord shards `<name>-<split>.tfrecord-00000-of-000NN`. Each record is one
episode, a `tf.train.Example` whose keys are the feature paths flattened with `/`:

    steps/observation/image        bytes  x N   256x256 JPEG, upright (the builder rotated the render 180 deg)
    steps/observation/wrist_image  bytes  x N   the same for the wrist camera
    steps/observation/state        float  x 8N  eef pos (3), eef axis-angle (3), gripper qpos (2)
    steps/observation/joint_state  float  x 7N
    steps/action                   float  x 7N  LIBERO's own: OSC deltas, gripper -1 open / +1 close
    steps/language_instruction     bytes  x N
    steps/is_first, is_last, is_terminal  int64 x N;  steps/reward, steps/discount  float x N
    episode_metadata/file_path     bytes  x 1   the no-noops HDF5 file the episode came from

These are OFT's `*_no_noops` datasets: the no-op steps are already gone (`noop_mask` keeps every
step of them). Episodes come back in rsd_pl's conventions (`Episode`): frames rotated back to the
render orientation the HDF5 files use, and kept JPEG-encoded until a step is read (`JpegFrames`:
a suite's decoded frames would not fit in memory), so the OpenVLA-OFT pipeline decodes the same
bytes OFT trained on and skips its own JPEG round trip for them.

TFRecord framing and the Example schema are hand-written here (about 40 lines): the only readers
without TensorFlow either skip the CRC checks (so a file that is not a TFRecord reads as garbage
lengths) or register `tensorflow.Example` in protobuf's global pool, which breaks a process that
also imports TensorFlow. `crc32c` computes the checksums; protobuf parses the records.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from rsd_pl.data.libero_hdf5 import ACTION_DIM, Episode
from rsd_pl.errors import RsdError

# rsd_pl camera name -> the RLDS observation key OFT's builder wrote it under.
CAMERAS = {"agentview_rgb": "image", "eye_in_hand_rgb": "wrist_image"}
REQUIRED_STEP_FEATURES = ("action", "observation/state", "language_instruction")
_MASK_DELTA = 0xA282EAD8
_MAX_RECORD = 1 << 31  # no LIBERO episode comes near 2 GiB: a larger length means a damaged file


def _masked_crc(data: bytes) -> int:
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@lru_cache(maxsize=1)
def _example_class():
    """tf.train.Example (tensorflow/core/example/{example,feature}.proto), built in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="rsd_pl_tf_example.proto", package="rsd_pl_tf", syntax="proto3")
    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL

    def message(name: str, *fields: tuple, options=None):
        msg = proto.message_type.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
            msg.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name)
        return msg

    message("BytesList", ("value", field.TYPE_BYTES, repeated, None))
    message("FloatList", ("value", field.TYPE_FLOAT, repeated, None))
    message("Int64List", ("value", field.TYPE_INT64, repeated, None))
    feature = message("Feature", ("bytes_list", field.TYPE_MESSAGE, optional, ".rsd_pl_tf.BytesList"),
                      ("float_list", field.TYPE_MESSAGE, optional, ".rsd_pl_tf.FloatList"),
                      ("int64_list", field.TYPE_MESSAGE, optional, ".rsd_pl_tf.Int64List"))
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message("Features", ("feature", field.TYPE_MESSAGE, repeated, ".rsd_pl_tf.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=field.TYPE_MESSAGE, label=optional, type_name=".rsd_pl_tf.Feature")
    message("Example", ("features", field.TYPE_MESSAGE, optional, ".rsd_pl_tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("rsd_pl_tf.Example"))


def read_records(path: str | Path) -> Iterator[bytes]:
    """The records of one TFRecord file, each checked against its two CRCs."""
    path = Path(path)
    with open(path, "rb") as handle:
        index = 0
        while header := handle.read(12):
            if len(header) < 12:
                raise RsdError(f"{path}: record {index} is cut short in its header (a truncated TFRecord file?)")
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc or length > _MAX_RECORD:
                raise RsdError(f"{path}: not a TFRecord file (record {index}'s length fails its CRC check)")
            data, (data_crc,) = handle.read(length), struct.unpack("<I", handle.read(4) or b"\0\0\0\0")
            if len(data) < length:
                raise RsdError(f"{path}: record {index} is cut short ({len(data)} of {length} bytes)")
            if _masked_crc(data) != data_crc:
                raise RsdError(f"{path}: record {index} fails its data CRC check (a damaged file)")
            yield data
            index += 1


def write_records(path: str | Path, records: Sequence[bytes]) -> None:
    """A TFRecord file of `records` (what TensorFlow's TFRecordWriter writes, uncompressed)."""
    with open(path, "wb") as handle:
        for data in records:
            header = struct.pack("<Q", len(data))
            handle.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))


def parse_example(record: bytes, where: str) -> dict[str, list]:
    """One serialized tf.train.Example -> {key: list of bytes / floats / ints}."""
    example = _example_class()()
    try:
        example.ParseFromString(record)
    except Exception as error:  # protobuf's DecodeError; the message says what was wrong
        raise RsdError(f"{where}: not a tf.train.Example ({error})") from error
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def encode_example(features: dict[str, list]) -> bytes:
    """{key: list of bytes / floats / ints} -> a serialized tf.train.Example (the writer of the tests)."""
    example = _example_class()()
    for key, values in features.items():
        feature = example.features.feature[key]
        values = list(values)
        if values and isinstance(values[0], bytes | str):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif values and isinstance(values[0], int | np.integer | bool | np.bool_):
            feature.int64_list.value.extend(int(v) for v in values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return example.SerializeToString()


def flatten_features(spec: dict, prefix: str = "") -> dict[str, dict]:
    """TFDS's features.json -> {flat key ('steps/observation/image'): the leaf's spec}."""
    if "featuresDict" in spec:
        out = {}
        for name, child in spec["featuresDict"].get("features", {}).items():
            out.update(flatten_features(child, f"{prefix}{name}/"))
        return out
    if "sequence" in spec:  # tfds.features.Dataset / Sequence: the steps of an episode
        return flatten_features(spec["sequence"]["feature"], prefix)
    return {prefix.rstrip("/"): spec}


def is_rlds_dir(path: Path) -> bool:
    return _dataset_dir(path) is not None


def _dataset_dir(path: Path) -> Path | None:
    """The folder holding features.json: `path` itself or its one version folder (`1.0.0/`)."""
    if not path.is_dir():
        return None
    if (path / "features.json").is_file() and (path / "dataset_info.json").is_file():
        return path
    versions = [p for p in path.iterdir() if p.is_dir() and (p / "features.json").is_file()]
    return versions[0] if len(versions) == 1 else None


def rlds_files(path: str | Path) -> list[Path]:
    """dataset_info.json, features.json and the TFRecord shards of an RLDS dataset folder (sorted)."""
    root = _dataset_dir(Path(path))
    if root is None:
        raise RsdError(f"{path}: not an RLDS dataset folder (no features.json and dataset_info.json in it "
                       "or in one version folder under it)")
    shards = sorted(p for p in root.iterdir() if ".tfrecord" in p.name and p.is_file())
    if not shards:
        raise RsdError(f"{root}: an RLDS dataset folder without *.tfrecord* shards")
    return [root / "dataset_info.json", root / "features.json", *shards]


def _check_features(path: Path) -> dict[str, dict]:
    try:
        flat = flatten_features(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise RsdError(f"{path}: not a TFDS features.json ({error})") from error
    missing = [f"steps/{k}" for k in REQUIRED_STEP_FEATURES if f"steps/{k}" not in flat]
    if missing:
        raise RsdError(f"{path}: lacks the RLDS features {missing} (found: {sorted(flat)})")
    return flat


class JpegFrames:
    """A camera's frames of one episode, kept JPEG-encoded; indexing decodes (uint8 [H, W, 3] each) and
    rotates them 180 deg to LIBERO's render orientation, the one every rsd_pl demo stores."""

    def __init__(self, encoded: list[bytes], shape: tuple[int, int, int], where: str):
        self.encoded, self.where = encoded, where
        self.shape = (len(encoded), *shape)

    def __len__(self) -> int:
        return len(self.encoded)

    def _decode(self, i: int) -> np.ndarray:
        import simplejpeg

        try:
            # OFT's training decodes with TensorFlow's libjpeg-turbo defaults: fast integer IDCT, fancy upsampling.
            frame = simplejpeg.decode_jpeg(self.encoded[i], colorspace="RGB", fastdct=True, fastupsample=False)
        except ValueError as error:
            raise RsdError(f"{self.where}: step {i}'s frame is not a readable JPEG ({error})") from error
        if frame.shape != self.shape[1:]:
            raise RsdError(f"{self.where}: step {i}'s frame is {frame.shape}; features.json says {self.shape[1:]}")
        return np.ascontiguousarray(frame[::-1, ::-1])

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self._decode(int(index))
        picked = np.arange(len(self))[index]  # a boolean mask, a slice or an index array
        return JpegFrames([self.encoded[i] for i in picked], self.shape[1:], self.where)

    def __array__(self, dtype=None, copy=None):
        frames = np.stack([self._decode(i) for i in range(len(self))]) if len(self) else np.zeros(self.shape, np.uint8)
        return frames if dtype is None else frames.astype(dtype)


def read_rlds(path: str | Path, image_keys: Sequence[str] | None = None, require_images: bool = False) -> list[Episode]:
    """Every episode of an RLDS dataset folder, in shard and record order (`Episode`, rsd_pl's conventions)."""
    files = rlds_files(path)
    features = _check_features(files[1])
    available = {camera: key for camera, key in CAMERAS.items() if f"steps/observation/{key}" in features}
    wanted = list(available) if image_keys is None else list(image_keys)
    missing = [k for k in wanted if k not in available]
    if missing or (require_images and not wanted):
        raise RsdError(f"{files[1]}: no camera for {missing or list(CAMERAS)} (rsd_pl camera -> RLDS key: {CAMERAS}; "
                       f"found {sorted(k for k in features if k.startswith('steps/observation/'))})")
    episodes = []
    for shard in files[2:]:
        for i, record in enumerate(read_records(shard)):
            where = f"{shard}:record {i}"
            episodes.append(_episode(parse_example(record, where), features, wanted, where))
    if not episodes:
        raise RsdError(f"{path}: the RLDS shards hold no episodes")
    return episodes


def _episode(example: dict[str, list], features: dict[str, dict], cameras: list[str], where: str) -> Episode:
    missing = [f"steps/{k}" for k in REQUIRED_STEP_FEATURES if f"steps/{k}" not in example]
    if missing:
        raise RsdError(f"{where}: the episode lacks {missing}")
    actions = np.asarray(example["steps/action"], dtype=np.float32)
    n = len(actions) // ACTION_DIM
    if n == 0 or len(actions) != n * ACTION_DIM:
        raise RsdError(f"{where}: steps/action holds {len(actions)} floats, not a whole number of {ACTION_DIM}-D steps")
    state = np.asarray(example["steps/observation/state"], dtype=np.float32)
    if len(state) != 8 * n:
        raise RsdError(f"{where}: steps/observation/state holds {len(state)} floats; expected 8 x {n} steps")
    instructions = {bytes(v).decode() for v in example["steps/language_instruction"]}
    if len(instructions) != 1:
        raise RsdError(f"{where}: steps/language_instruction is not one instruction per episode ({instructions})")
    images = {}
    for camera in cameras:
        key = f"steps/observation/{CAMERAS[camera]}"
        encoded = [bytes(v) for v in example.get(key, [])]
        if len(encoded) != n:
            raise RsdError(f"{where}: {key} has {len(encoded)} frames but the episode has {n} steps")
        shape = tuple(int(d) for d in features[key].get("image", {}).get("shape", {}).get("dimensions", []))
        if len(shape) != 3:
            raise RsdError(f"{where}: features.json gives {key} no image shape")
        images[camera] = JpegFrames(encoded, shape, f"{where}:{key}")
    file_path = example.get("episode_metadata/file_path") or [b""]
    attrs = {"num_samples": n, "file_path": bytes(file_path[0]).decode(), "frames_jpeg": True}
    return Episode(where, instructions.pop().strip(), actions.reshape(n, ACTION_DIM), state.reshape(n, 8),
                   images, None, attrs)
