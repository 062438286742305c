"""The one observation preprocessing used in training and in evaluation.

Demos store images as LIBERO renders them (upside down), like the official datasets; this module is
the only place that turns them upright and resizes them, so a model never sees one convention at
training time and another at evaluation time (failure 4 of MISSION.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PROPRIO_DIM = 8  # eef pos (3) + eef axis-angle (3) + gripper qpos (2), as OpenVLA-OFT on LIBERO


IMAGE_PIPELINES = ("resize", "oft")


def preprocess_images(raw: np.ndarray | torch.Tensor, size: int, pipeline: str = "resize",
                      jpeg_round_trip: bool = True) -> torch.Tensor:
    """Raw frames uint8 [..., S0, S0, 3] (upside down) -> float32 [..., 3, size, size] in [0, 1], upright.

    pipeline `resize`: rotate, antialiased bilinear resize (the tiny backbone). `oft`: OpenVLA-OFT's own
    (rotate, JPEG round trip, Lanczos-3 resize, 0.9-area centre crop: rsd_pl.models.openvla.preprocess),
    as uint8 / 255, which the openvla backbone normalises per vision tower. `jpeg_round_trip=False` skips the
    round trip for frames decoded from a JPEG a dataset stored (OFT's RLDS): OFT's training decodes those once."""
    frames = torch.as_tensor(np.ascontiguousarray(raw) if isinstance(raw, np.ndarray) else raw)
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [..., H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
    if pipeline == "oft":
        from rsd_pl.models.openvla.preprocess import oft_images

        upright = torch.from_numpy(oft_images(frames.numpy(), size, jpeg=jpeg_round_trip))  # (..., size, size, 3)
        return upright.movedim(-1, -3).float() / 255.0
    if pipeline != "resize":
        raise ValueError(f"image pipeline {pipeline!r} is not one of {IMAGE_PIPELINES}")
    lead = frames.shape[:-3]
    frames = frames.reshape(-1, *frames.shape[-3:])                 # (N, S0, S0, 3)
    frames = frames.flip(1, 2).permute(0, 3, 1, 2).float() / 255.0   # (N, 3, S0, S0), rotated 180 deg
    if frames.shape[-1] != size or frames.shape[-2] != size:
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames.clamp_(0.0, 1.0).reshape(*lead, 3, size, size)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) as robosuite stores it -> axis-angle (3,).

    Same convention as robosuite's `quat2axisangle` (no hemisphere flip), which the official LIBERO
    datasets and OpenVLA-OFT's LIBERO proprio use.
    """
    x, y, z, w = (float(v) for v in quat)
    w = max(-1.0, min(1.0, w))
    sin_half = math.sqrt(max(0.0, 1.0 - w * w))
    if sin_half < 1e-8:
        return np.zeros(3, dtype=np.float32)
    angle = 2.0 * math.acos(w)
    return np.array([x, y, z], dtype=np.float32) * (angle / sin_half)


def proprio_from_raw(eef_pos: np.ndarray, eef_quat: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """Robosuite observation parts -> OFT's 8-D proprio (float32)."""
    position = np.asarray(eef_pos, dtype=np.float32)
    gripper = np.asarray(gripper_qpos, dtype=np.float32)
    return np.concatenate([position, quat_to_axis_angle(eef_quat), gripper])
