"""LIBERO-format HDF5: round trip, schema, and the bad inputs of issue 2."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rsd_pl.data.demo_writer import DemoWriter
from rsd_pl.data.libero_hdf5 import read_episodes, resolve_demo_files, validate_file
from rsd_pl.data.synthetic import synthetic_demo, write_synthetic_demos
from rsd_pl.errors import RsdError

HEADER = dict(env_name="Synthetic", problem_info={"language_instruction": "put the bowl on the plate"},
              bddl_file_name="x.bddl", env_args={"image_size": 32})


def test_round_trip_is_exact(tmp_path):
    demo = synthetic_demo(np.random.default_rng(0), image_size=32)
    path = tmp_path / "demo.hdf5"
    with DemoWriter(path, **HEADER) as writer:
        assert writer.add_demo(**demo, attrs={"init_state_index": 4}) == "demo_0"
    (episode,) = read_episodes(path)
    np.testing.assert_array_equal(episode.actions, demo["actions"])
    np.testing.assert_array_equal(episode.images["agentview_rgb"], demo["obs"]["agentview_rgb"])
    np.testing.assert_array_equal(episode.object_pos, demo["obs"]["object_pos"])
    expected_proprio = np.concatenate([demo["obs"][k] for k in ("ee_pos", "ee_ori", "gripper_states")], 1)
    np.testing.assert_allclose(episode.proprio, expected_proprio)
    assert episode.instruction == "put the bowl on the plate"
    assert episode.attrs["init_state_index"] == 4 and episode.attrs["num_samples"] == len(demo["actions"])


def test_schema_matches_upstream_create_dataset(tmp_path):
    path = write_synthetic_demos(tmp_path / "d.hdf5", num_demos=2)
    with h5py.File(path) as f:
        data = f["data"]
        assert json.loads(data.attrs["problem_info"])["language_instruction"]
        for key in ("env_name", "bddl_file_name", "env_args", "num_demos", "total"):
            assert key in data.attrs, key
        assert data.attrs["num_demos"] == 2
        demo = data["demo_1"]
        for key in ("actions", "states", "robot_states", "rewards", "dones"):
            assert key in demo, key
        for key in ("agentview_rgb", "eye_in_hand_rgb", "gripper_states", "joint_states", "ee_states",
                    "ee_pos", "ee_ori"):
            assert key in demo["obs"], key
        assert demo["obs/agentview_rgb"].dtype == np.uint8 and demo["obs/agentview_rgb"].shape[1:] == (32, 32, 3)


def test_append_resumes_and_drops_partial_demo(tmp_path):
    path = write_synthetic_demos(tmp_path / "d.hdf5", num_demos=2)
    with h5py.File(path, "a") as f:  # a crash mid-demo: group without num_samples
        f["data"].create_group("demo_2").create_dataset("actions", data=np.zeros((3, 7)))
    with pytest.raises(RsdError, match=r"d.hdf5:data/demo_2 has no num_samples attribute and lacks \['obs'\]"):
        read_episodes(path)  # a partial demo is never read as data: refused, naming it (rerunning collect drops it)
    with DemoWriter(path, **{**HEADER, "env_name": "Synthetic", "bddl_file_name": "synthetic.bddl",
                             "env_args": {"image_size": 32}}) as writer:
        assert len(writer.existing_demos()) == 2
        writer.add_demo(**synthetic_demo(np.random.default_rng(1)))
    assert len(read_episodes(path)) == 3


def test_append_refuses_other_schema(tmp_path):
    path = write_synthetic_demos(tmp_path / "d.hdf5", num_demos=1)
    with pytest.raises(RsdError, match="different env_args"):
        with DemoWriter(path, **{**HEADER, "bddl_file_name": "synthetic.bddl", "env_args": {"image_size": 64}}):
            pass
    assert len(read_episodes(path)) == 1


def test_refuses_mixed_image_sizes(tmp_path):
    path = write_synthetic_demos(tmp_path / "d.hdf5", num_demos=1, image_size=32)
    header = {**HEADER, "bddl_file_name": "synthetic.bddl"}
    with DemoWriter(path, **header) as writer, pytest.raises(RsdError, match="agentview_rgb"):
        writer.add_demo(**synthetic_demo(np.random.default_rng(1), image_size=16))


def test_missing_file(tmp_path):
    with pytest.raises(RsdError, match="not found"):
        read_episodes(tmp_path / "nope.hdf5")
    with pytest.raises(RsdError, match="no demo files"):
        resolve_demo_files(str(tmp_path / "*.hdf5"))


def test_not_hdf5(tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(RsdError, match="broken.hdf5: not a readable HDF5"):
        read_episodes(path)


def _write_raw(path, actions, with_actions=True):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "x"})
        demo = data.create_group("demo_0")
        demo.attrs["num_samples"] = len(actions)
        if with_actions:
            demo.create_dataset("actions", data=actions)
        obs = demo.create_group("obs")
        for key, width in (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2)):
            obs.create_dataset(key, data=np.zeros((len(actions), width)))


def test_no_actions(tmp_path):
    path = tmp_path / "a.hdf5"
    _write_raw(path, np.zeros((5, 7)), with_actions=False)
    with pytest.raises(RsdError, match=r"demo_0/actions is missing"):
        read_episodes(path)
    with pytest.raises(RsdError, match=r"demo_0/actions is missing"):
        validate_file(path)


def test_wrong_action_width(tmp_path):
    path = tmp_path / "a.hdf5"
    _write_raw(path, np.zeros((5, 6)))
    with pytest.raises(RsdError, match=r"demo_0/actions has shape \(5, 6\); expected \(N, 7\)"):
        read_episodes(path)


def test_nan_in_actions(tmp_path):
    path = tmp_path / "a.hdf5"
    actions = np.zeros((5, 7))
    actions[3, 2] = np.nan
    _write_raw(path, actions)
    with pytest.raises(RsdError, match="non-finite value .* at step 3, dim 2"):
        validate_file(path)


def test_writer_refuses_nan_and_writes_nothing(tmp_path):
    demo = synthetic_demo(np.random.default_rng(0))
    demo["actions"][0, 0] = np.nan
    path = tmp_path / "d.hdf5"
    with DemoWriter(path, **HEADER) as writer, pytest.raises(RsdError, match="non-finite"):
        writer.add_demo(**demo)
    with h5py.File(path) as f:
        assert not [k for k in f["data"] if k.startswith("demo_")]
