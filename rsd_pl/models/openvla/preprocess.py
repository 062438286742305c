"""OpenVLA-OFT's LIBERO image preprocessing, reimplemented without TensorFlow.

OFT (`experiments/robot/openvla_utils.py` @213c5ff) runs, per camera frame:
  1. rotate 180 degrees (LIBERO renders upside down);
  2. `resize_image_for_policy`: `tf.image.encode_jpeg` (quality 95, 4:2:0) + `tf.io.decode_image`
     (libjpeg fast integer IDCT, fancy upsampling), `tf.image.resize(lanczos3, antialias=True)`, round, clip, uint8;
  3. `center_crop_image`: `tf.image.crop_and_resize` of the 0.9-area centre box back to 224 (bilinear), uint8;
  4. the HF processor: `(uint8 / 255 - mean) / std` per vision tower, towers stacked on channels.

Library choice, measured on `shared/fixtures/openvla_oft/expected.safetensors` (2 frames, 301,056 values per stage):
  - JPEG: Pillow encodes (its q95 encoder writes TF's entropy data) and simplejpeg 1.9.0 (libjpeg-turbo) decodes with
    `fastdct=True, fastupsample=False`, i.e. TF's INTEGER_FAST IDCT with fancy upsampling. Pillow's own decoder
    (accurate IDCT) puts only 34-39 % of the resized pixels on the reference (max 17 levels off); simplejpeg's own
    encoder is no better (52-56 %, max 10).
  - Lanczos-3: Pillow's `resize(LANCZOS)` after the right decode gives 86-88 % exact (max 6 levels off), so the resize
    is TF's `ScaleAndTranslate` kernel rewritten in float32 numpy. With weights from numpy's or a float64 `sin` it is
    exact except for 1-2 values sitting on a .5 rounding edge; with glibc's `sinf` (what TF calls) it is bit-exact.
  - Result: raw -> images_resized_224, -> images_preprocessed and -> pixel_values are all exact (0 values differ).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from rsd_pl.errors import RsdError

OPENVLA_IMAGE_SIZE = 224
JPEG_QUALITY = 95  # tf.image.encode_jpeg default
CENTER_CROP_AREA = 0.9  # OFT's crop_scale (area); the box side is sqrt(0.9)
_TF_PI = np.float32(3.14159265359)  # sampling_kernels.h: constexpr float kPI
_LANCZOS_RADIUS = np.float32(3.0)

Normalization = list[tuple[tuple[float, float, float], tuple[float, float, float]]]


def _libm_sinf():
    """glibc's single-precision `sinf` (what TF's `std::sin(float)` calls), or None off glibc."""
    name = ctypes.util.find_library("m")
    try:
        fn = ctypes.CDLL(name).sinf if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


_SINF = _libm_sinf()


def _sin_f32(x: np.ndarray) -> np.ndarray:
    if _SINF is None:  # not glibc: correctly rounded sin, differs from sinf by 1 ulp on ~1 % of arguments
        return np.sin(x.astype(np.float64)).astype(np.float32)
    return np.array([_SINF(float(v)) for v in x.ravel()], dtype=np.float32).reshape(x.shape)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TF's LanczosKernelFunc(3), term by term in float32."""
    x = np.abs(x).astype(np.float32)
    px = _TF_PI * x
    with np.errstate(divide="ignore", invalid="ignore"):
        v = _LANCZOS_RADIUS * _sin_f32(px) * _sin_f32(px / _LANCZOS_RADIUS) / (_TF_PI * _TF_PI * x * x)
    v = np.where(x.astype(np.float64) <= 1e-3, np.float32(1.0), v)
    return np.where(x > _LANCZOS_RADIUS, np.float32(0.0), v).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _lanczos3_spans(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """TF ComputeSpansCore (antialias, translation 0) -> starts int64 [n_out], weights float32 [n_out, span]."""
    scale = np.float32(n_out) / np.float32(n_in)
    inv_scale = np.float32(1.0 / float(scale))
    kernel_scale = max(inv_scale, np.float32(1.0))
    reach = _LANCZOS_RADIUS * kernel_scale
    span = min(2 * int(np.ceil(reach)) + 1, n_in)
    sample = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * inv_scale  # [n_out]
    start = np.clip(np.ceil(sample - reach - np.float32(0.5)), 0, n_in - 1).astype(np.int64)
    end = np.clip(np.floor(sample + reach - np.float32(0.5)), 0, n_in - 1).astype(np.int64) + 1
    src = start[:, None] + np.arange(span)  # [n_out, span]
    pos = (src.astype(np.float32) + np.float32(0.5) - sample[:, None]) * (np.float32(1.0) / kernel_scale)
    weights = np.where(src < end[:, None], _lanczos3(pos), np.float32(0.0))
    total = np.zeros(n_out, np.float32)
    for k in range(span):  # TF sums the taps in order, in float32
        total = total + weights[:, k]
    weights = (weights * (np.float32(1.0) / total)[:, None]).astype(np.float32)
    start.flags.writeable = weights.flags.writeable = False  # cached: shared by every call
    return start, weights


def _gather(x: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Sum over taps in TF's order (out += w * in, float32, no FMA); taps past the span carry weight 0."""
    n_in = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(weights.shape[1]):
        term = weights[:, k].reshape(shape) * np.take(x, np.minimum(starts + k, n_in - 1), axis=axis)
        out = term if out is None else out + term
    return out


def lanczos3_resize(images: np.ndarray, size: int) -> np.ndarray:
    """`tf.image.resize(method='lanczos3', antialias=True)`, round, clip: uint8 [..., H, W, C] -> [..., size, size, C].

    Rows (height) first into a float32 intermediate [..., size, W, C], then columns, as TF's GatherSpans does.
    """
    x = images.astype(np.float32)
    x = _gather(x, *_lanczos3_spans(x.shape[-3], size), axis=x.ndim - 3)  # [..., size, W, C]
    x = _gather(x, *_lanczos3_spans(x.shape[-2], size), axis=x.ndim - 2)  # [..., size, size, C]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)  # np.round is half-to-even, like tf.round


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """`tf.io.decode_image(tf.image.encode_jpeg(image))`: uint8 [H, W, 3] -> uint8 [H, W, 3]."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    import simplejpeg  # here, not at the top: timing the network (bench) needs no JPEG codec

    return simplejpeg.decode_jpeg(buf.getvalue(), colorspace="RGB", fastdct=True, fastupsample=False)


def _crop_axis(n_in: int, n_out: int, lo: np.float32, hi: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF CropAndResize bilinear sampling along one axis -> (floor index, ceil index, lerp float32), each [n_out]."""
    step = (hi - lo) * np.float32(n_in - 1) / np.float32(n_out - 1)
    pos = lo * np.float32(n_in - 1) + np.arange(n_out, dtype=np.float32) * step
    i0 = np.floor(pos).astype(np.int64)
    return i0, np.ceil(pos).astype(np.int64), pos - i0.astype(np.float32)


def oft_center_crop(images: np.ndarray, size: int = OPENVLA_IMAGE_SIZE) -> np.ndarray:
    """OFT's `center_crop_image`: uint8 [..., H, W, C] -> uint8 [..., size, size, C]."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)  # convert_image_dtype(float32)
    side = np.clip(np.sqrt(np.float32(CENTER_CROP_AREA)), np.float32(0), np.float32(1))
    lo = (np.float32(1) - side) / np.float32(2)
    y0, y1, y_lerp = _crop_axis(x.shape[-3], size, lo, lo + side)
    x0, x1, x_lerp = _crop_axis(x.shape[-2], size, lo, lo + side)
    top, bottom = x[..., y0, :, :], x[..., y1, :, :]  # [..., size, W, C]
    x_lerp = x_lerp[:, None]
    top = top[..., x0, :] + (top[..., x1, :] - top[..., x0, :]) * x_lerp  # [..., size, size, C]
    bottom = bottom[..., x0, :] + (bottom[..., x1, :] - bottom[..., x0, :]) * x_lerp
    out = np.clip(top + (bottom - top) * y_lerp[:, None, None], 0.0, 1.0)
    return np.trunc(out * np.float32(255.5)).astype(np.uint8)  # convert_image_dtype(uint8, saturate=True)


def _check_frames(frames: np.ndarray, what: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        got = f"{type(frames).__name__} {getattr(frames, 'dtype', '?')} {tuple(getattr(frames, 'shape', ()))}"
        raise ValueError(f"{what} expects a uint8 numpy array [..., H, W, 3]; got {got}")


def oft_images(frames: np.ndarray, size: int = OPENVLA_IMAGE_SIZE, center_crop: bool = True,
               jpeg: bool = True) -> np.ndarray:
    """Raw LIBERO frames uint8 [..., S0, S0, 3] (upside down, as rendered and as demos store them)
    -> uint8 [..., size, size, 3], upright: rotate 180, JPEG round trip + Lanczos-3 resize when S0 != size
    (OFT skips both when the frame is already size x size), then OFT's 0.9-area centre crop when center_crop.

    The skip follows `prepare_images_for_vla`; note OFT's `prepare_observation` round-trips every frame, so the two
    agree only for frames rendered at a size other than `size` (OFT renders LIBERO at 256).
    `jpeg=False` skips the round trip (frames decoded from a dataset's stored JPEG, as OFT's training reads RLDS).
    """
    _check_frames(frames, "oft_images")
    x = frames[..., ::-1, ::-1, :]  # [..., S0, S0, 3], upright
    if x.shape[-3:-1] != (size, size):
        lead = x.shape[:-3]
        flat = x.reshape((-1,) + x.shape[-3:])  # [N, S0, S0, 3]
        decoded = np.stack([jpeg_round_trip(f) for f in flat]) if len(flat) and jpeg else flat
        x = lanczos3_resize(decoded, size).reshape(lead + (size, size, 3))
    if center_crop:
        x = oft_center_crop(x, size)
    return np.ascontiguousarray(x)


def _triple(value, path: Path, key: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise RsdError(f"{path}: {key} must hold 3 numbers per tower, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def load_tower_normalization(preprocessor_config: Path) -> Normalization:
    """(mean, std) per vision tower from preprocessor_config.json: `tvf_normalize_params` when present
    (the bf16-rounded values the real processor applies), else `means`/`stds`; a config with neither
    raises rsd_pl.errors.RsdError naming the file and the missing keys."""
    path = Path(preprocessor_config)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RsdError(f"cannot read preprocessor config {path}: {err}") from err
    if "tvf_normalize_params" in cfg:
        params = cfg["tvf_normalize_params"]
        if not isinstance(params, list) or not params or not all(isinstance(p, dict) for p in params):
            raise RsdError(f"{path}: tvf_normalize_params must be a non-empty list of {{mean, std}} objects")
        pairs = [(p.get("mean"), p.get("std")) for p in params]
        key = "tvf_normalize_params[].mean/std"
    elif "means" in cfg and "stds" in cfg:
        if len(cfg["means"]) != len(cfg["stds"]) or not cfg["means"]:
            raise RsdError(f"{path}: means and stds must list the same, non-zero number of towers")
        pairs = list(zip(cfg["means"], cfg["stds"], strict=True))
        key = "means/stds"
    else:
        raise RsdError(f"{path}: no image normalization: needs 'tvf_normalize_params' or both 'means' and 'stds'")
    return [(_triple(m, path, key), _triple(s, path, key)) for m, s in pairs]
