"""Waypoint geometry of the scripted expert: pure numpy, no LIBERO."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rsd_pl.experts.geometry import (
    DOWN,
    extent_of,
    grasp_width,
    gripper_down,
    hand_collisions,
    local_top,
    pose_action,
    quat_to_matrix,
    rot_z,
    rotation_to_axis_angle,
    wrap_half_pi,
    yaw_to_close_along,
)


def box_points(center, size, yaw):
    """Corners of a box (size = full widths along its x, y, z) rotated by yaw about z."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return (signs * np.asarray(size) / 2) @ rot_z(yaw).T + np.asarray(center)


@pytest.mark.parametrize("yaw", [0.0, 0.4, -1.1])
def test_extent_of_a_rotated_box(yaw):
    extent = extent_of(box_points([0.1, -0.2, 0.95], [0.08, 0.04, 0.10], yaw))
    np.testing.assert_allclose(extent.center, [0.1, -0.2, 0.95], atol=1e-9)
    assert extent.top == pytest.approx(1.0) and extent.bottom == pytest.approx(0.9)
    assert extent.minor_width == pytest.approx(0.04) and extent.major_width == pytest.approx(0.08)
    # the narrow side of the box is its local y axis: yaw + 90 degrees (mod 180)
    assert wrap_half_pi(extent.minor_axis - (yaw + math.pi / 2)) == pytest.approx(0.0, abs=1e-9)


def test_yaw_to_close_along():
    assert yaw_to_close_along(math.pi / 2) == pytest.approx(0.0)        # default fingers close along y
    assert abs(yaw_to_close_along(0.0)) == pytest.approx(math.pi / 2)   # rim grasp: close along x
    fingers = gripper_down(yaw_to_close_along(0.3)) @ np.array([0.0, 1.0, 0.0])
    assert abs(fingers @ np.array([math.cos(0.3), math.sin(0.3), 0.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("axis, angle", [([0, 0, 1], 0.3), ([1, 2, -1], 2.0), ([0, 1, 1], math.pi - 1e-6),
                                         ([1, 0, 0], 0.0)])
def test_rotation_to_axis_angle_round_trip(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    quat = np.array([*(axis * math.sin(angle / 2)), math.cos(angle / 2)])  # (x, y, z, w)
    aa = rotation_to_axis_angle(quat_to_matrix(quat))
    assert np.linalg.norm(aa) == pytest.approx(angle, abs=1e-5)
    if angle > 1e-3:
        assert abs(aa @ axis / np.linalg.norm(aa)) == pytest.approx(1.0, abs=1e-5)


def test_gripper_down_is_down():
    np.testing.assert_allclose(gripper_down(0.0), DOWN)
    np.testing.assert_allclose(gripper_down(0.7) @ [0, 0, 1], [0, 0, -1], atol=1e-12)  # tool z points down


def test_pose_action_moves_toward_target_and_clips():
    action = pose_action(np.zeros(3), DOWN, np.array([0.01, 0.0, 0.0]), DOWN, gripper=1.0)
    np.testing.assert_allclose(action, [0.2, 0, 0, 0, 0, 0, 1], atol=1e-6)   # 1 cm = 0.2 of the 5 cm scale
    far = pose_action(np.zeros(3), DOWN, np.array([0.0, 0.0, -1.0]), DOWN, gripper=-1.0, max_speed=0.5)
    np.testing.assert_allclose(far[:3], [0, 0, -0.5], atol=1e-6)
    turn = pose_action(np.zeros(3), DOWN, np.zeros(3), gripper_down(0.1), gripper=-1.0)
    np.testing.assert_allclose(turn[3:6], [0, 0, 0.2], atol=1e-6)   # +0.1 rad yaw about world z, / 0.5 rad
    assert np.all(np.abs(pose_action(np.zeros(3), DOWN, np.ones(3), gripper_down(3.0), 1.0)) <= 1.0)


def test_local_top_reads_the_rim_height_near_a_point():
    # a bowl rim tilted along x: the +x side is 3 cm lower than the -x side
    angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    rim = np.stack([0.05 * np.cos(angles), 0.05 * np.sin(angles), 1.0 - 0.3 * 0.05 * np.cos(angles)], axis=1)
    assert local_top(rim, np.array([0.047, 0.0]), radius=0.02) == pytest.approx(1.0 - 0.015, abs=2e-3)
    assert local_top(rim, np.array([-0.047, 0.0]), radius=0.02) == pytest.approx(1.015, abs=2e-3)
    assert local_top(rim, np.array([0.5, 0.5]), radius=0.02) is None


def test_grasp_width_grows_with_rotation_off_the_narrow_axis():
    assert grasp_width(0.043, 0.081, 0.0) == pytest.approx(0.043)
    expected = 0.043 * math.cos(math.radians(20)) + 0.081 * math.sin(math.radians(20))
    assert grasp_width(0.043, 0.081, math.radians(20)) == pytest.approx(expected)
    assert grasp_width(0.043, 0.081, math.pi / 2) == pytest.approx(0.081)


def test_hand_collisions_sees_a_neighbour_along_the_finger_axis_only():
    grasp = np.array([0.0, 0.0, 0.01])
    can = box_points([0.0, 0.09, 0.04], [0.06, 0.02, 0.08], 0.0)  # tall can 9 cm away along +y
    assert hand_collisions(can, grasp, close_dir=math.pi / 2) > 0   # fingers/hand along y: hit
    assert hand_collisions(can, grasp, close_dir=0.0) == 0           # hand along x: clear
    low = box_points([0.0, 0.09, 0.005], [0.06, 0.02, 0.01], 0.0)   # a flat neighbour under the hand
    assert hand_collisions(low, grasp, close_dir=math.pi / 2) == 0
