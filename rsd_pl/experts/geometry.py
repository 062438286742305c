"""Waypoint geometry for the scripted experts: pure numpy, no simulator.

Frames: world (robosuite), z up. The Panda gripper pointing down with yaw 0 closes its fingers
along world y; a yaw of +90 degrees makes it close along world x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POS_SCALE = 0.05  # OSC_POSE: an action of 1 moves the position goal 5 cm
ROT_SCALE = 0.5   # ... and the orientation goal 0.5 rad
# eef orientation pointing down, yaw 0: 180 degrees about world x
DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class Extent:
    """An object's world-frame shape summary, from its geometry points."""

    center: np.ndarray   # (3,) xy centre of the horizontal extent, z = middle height
    top: float           # highest z
    bottom: float        # lowest z
    minor_axis: float    # angle (rad) of the narrowest horizontal direction
    minor_width: float   # width along that direction (m)
    major_width: float   # width across it (m)


def extent_of(points: np.ndarray) -> Extent:
    """(P, 3) world points of an object's geoms -> Extent (principal axes of the xy spread)."""
    xy = points[:, :2]
    mean = xy.mean(axis=0)
    cov = np.cov((xy - mean).T) + 1e-12 * np.eye(2)
    _, vecs = np.linalg.eigh(cov)            # eigenvalues ascending: column 0 = minor direction
    minor, major = vecs[:, 0], vecs[:, 1]
    along_minor, along_major = (xy - mean) @ minor, (xy - mean) @ major
    mid = (mean + minor * (along_minor.max() + along_minor.min()) / 2
           + major * (along_major.max() + along_major.min()) / 2)
    top, bottom = float(points[:, 2].max()), float(points[:, 2].min())
    return Extent(np.array([mid[0], mid[1], (top + bottom) / 2]), top, bottom,
                  math.atan2(minor[1], minor[0]), float(np.ptp(along_minor)), float(np.ptp(along_major)))


def local_top(points: np.ndarray, xy: np.ndarray, radius: float) -> float | None:
    """Highest z of the points within `radius` (horizontally) of `xy`; None when there are none."""
    near = np.linalg.norm(points[:, :2] - np.asarray(xy)[None], axis=1) < radius
    return float(points[near, 2].max()) if near.any() else None


def grasp_width(minor_width: float, major_width: float, offset: float) -> float:
    """Width of a box between the fingers when they close `offset` rad away from its narrow axis."""
    return minor_width * abs(math.cos(offset)) + major_width * abs(math.sin(offset))


def hand_collisions(points: np.ndarray, grasp: np.ndarray, close_dir: float) -> int:
    """How many obstacle points (P, 3) the open gripper at `grasp` would hit.

    The Panda hand is a ~21 x 7 cm box along the finger axis from ~4 cm above the eef site; the
    open fingers span ~10 x 3 cm down to ~1 cm below it.
    """
    axis = np.array([math.cos(close_dir), math.sin(close_dir)])
    rel = points[:, :2] - grasp[None, :2]
    along, across = np.abs(rel @ axis), np.abs(rel @ np.array([-axis[1], axis[0]]))
    height = points[:, 2] - grasp[2]
    hand = (along < 0.105) & (across < 0.035) & (height > 0.035)
    fingers = (along < 0.055) & (across < 0.015) & (height > -0.01)
    return int(np.count_nonzero(hand | fingers))


def wrap_half_pi(angle: float) -> float:
    """A gripper yaw is symmetric under 180 degrees: map to [-pi/2, pi/2)."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


def yaw_to_close_along(direction: float) -> float:
    """The gripper yaw whose fingers close along the horizontal direction `direction` (rad)."""
    return wrap_half_pi(direction - math.pi / 2)


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def gripper_down(yaw: float) -> np.ndarray:
    """(3, 3) world rotation of a downward-pointing gripper with the given yaw."""
    return rot_z(yaw) @ DOWN


def rotation_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> axis-angle (3,), robust near 0 and pi."""
    cos = float(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    if math.pi - angle < 1e-4:  # near pi: (R + I) / 2 = a a^T
        outer = (rot + np.eye(3)) / 2.0
        k = int(np.argmax(np.diag(outer)))
        return outer[:, k] / math.sqrt(outer[k, k]) * angle
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return axis / (2.0 * math.sin(angle)) * angle


def pose_action(pos: np.ndarray, rot: np.ndarray, target_pos: np.ndarray, target_rot: np.ndarray,
                gripper: float, max_speed: float = 1.0) -> np.ndarray:
    """Proportional OSC_POSE action (7,) in [-1, 1] that moves (pos, rot) toward the target pose."""
    delta = (np.asarray(target_pos) - np.asarray(pos)) / POS_SCALE
    norm = np.linalg.norm(delta)
    if norm > max_speed:
        delta *= max_speed / norm
    rot_err = rotation_to_axis_angle(target_rot @ rot.T) / ROT_SCALE  # world-frame rotation error
    return np.clip(np.concatenate([delta, rot_err, [gripper]]), -1.0, 1.0).astype(np.float32)


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w), robosuite's order -> (3, 3) rotation."""
    x, y, z, w = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
