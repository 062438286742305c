"""The one image/proprio preprocessing shared by training and evaluation."""

import numpy as np
import pytest
import torch

from rsd_pl.data.obs import preprocess_images, proprio_from_raw, quat_to_axis_angle


def test_images_are_flipped_upright_and_scaled():
    raw = np.zeros((2, 4, 4, 3), np.uint8)
    raw[:, 0, 0] = 255  # top-left as rendered -> bottom-right once upright
    out = preprocess_images(raw, size=4)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert torch.all(out[:, :, 3, 3] == 1.0) and out.sum() == 2 * 3


def test_images_resize_keeps_leading_dims():
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    out = preprocess_images(raw, size=8)
    assert out.shape == (2, 3, 3, 8, 8) and 0.0 <= out.min() and out.max() <= 1.0


def test_images_reject_float_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(np.zeros((4, 4, 3), np.float32), 4)


def test_axis_angle_matches_known_rotations():
    half = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, half, half])), [0, 0, np.pi / 2], atol=1e-6)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([1.0, 0, 0, 0])), [np.pi, 0, 0], atol=1e-6)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, 0, 1.0])), [0, 0, 0])


def test_proprio_is_eight_dims():
    proprio = proprio_from_raw(np.ones(3), np.array([0, 0, 0, 1.0]), np.array([0.04, -0.04]))
    assert proprio.shape == (8,) and proprio.dtype == np.float32
