"""ActionNormalizer: q01/q99 map, gripper untouched, inverse, serialisation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.errors import RsdError


def _actions(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = rng.normal(0.0, [0.3, 0.2, 0.4, 0.05, 0.05, 0.1, 1.0], size=(n, 7))
    actions[:, 6] = np.where(actions[:, 6] > 0, 1.0, -1.0)  # gripper
    return actions.astype(np.float32)


def test_fit_stats_and_bounds():
    actions = _actions()
    norm = ActionNormalizer.fit(actions)
    np.testing.assert_allclose(norm.q01, np.quantile(actions.astype(np.float64), 0.01, axis=0))
    np.testing.assert_allclose(norm.q99, np.quantile(actions.astype(np.float64), 0.99, axis=0))
    assert norm.mask.tolist() == [True] * 6 + [False]
    out = norm.normalize(actions)
    assert out.dtype == np.float32 and out.shape == actions.shape
    assert out[:, :6].min() == -1.0 and out[:, :6].max() == 1.0  # clipped outside q01/q99
    np.testing.assert_array_equal(out[:, 6], actions[:, 6])  # gripper untouched
    np.testing.assert_allclose(norm.normalize(norm.q01.astype(np.float32))[:6], -1.0, atol=1e-6)
    np.testing.assert_allclose(norm.normalize(norm.q99.astype(np.float32))[:6], 1.0, atol=1e-6)


def test_round_trip_numpy_and_torch():
    norm = ActionNormalizer.fit(_actions())
    inside = np.clip(_actions(50, seed=1), norm.q01, norm.q99).astype(np.float32)
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(inside)), inside, atol=1e-6)
    tensor = torch.from_numpy(inside)
    back = norm.unnormalize(norm.normalize(tensor))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    torch.testing.assert_close(back, tensor, atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.normalize(tensor), torch.from_numpy(norm.normalize(inside)), atol=1e-6, rtol=0)


def test_degenerate_dim_is_guarded():
    actions = _actions()
    actions[:, 2] = 0.25  # constant
    norm = ActionNormalizer.fit(actions)
    out = norm.normalize(actions)
    assert np.isfinite(out).all() and (out[:, 2] == 0).all()
    np.testing.assert_allclose(norm.unnormalize(out)[:, 2], 0.25)


def test_dict_round_trip_is_json():
    norm = ActionNormalizer.fit(_actions())
    again = ActionNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    for key in ("q01", "q99", "mean", "std", "min", "max", "mask"):
        np.testing.assert_array_equal(getattr(again, key), getattr(norm, key))


def test_nan_names_source_and_row():
    actions = _actions()
    actions[17, 3] = np.nan
    with pytest.raises(RsdError, match=r"demos\.hdf5.*row 17, dim 3"):
        ActionNormalizer.fit(actions, source="demos.hdf5")


def test_wrong_width_and_bad_stats():
    with pytest.raises(RsdError, match=r"shape \(N, 7\).*\(500, 6\)"):
        ActionNormalizer.fit(_actions()[:, :6])
    norm = ActionNormalizer.fit(_actions())
    with pytest.raises(RsdError, match="8 dims"):
        norm.normalize(np.zeros((3, 8), np.float32))
    stats = norm.to_dict()
    del stats["q99"]
    with pytest.raises(RsdError, match=r"rfsq@1 stats.*q99"):
        ActionNormalizer.from_dict(stats, source="rfsq@1 stats")
