"""Demonstrations that never use a benchmark init state: placements drawn by LIBERO's own sampler, seeded per
attempt and recorded, refused when equal to one of the task's 50 benchmark init states (real LIBERO)."""

from __future__ import annotations

import numpy as np
import pytest

from rsd_pl import collect
from rsd_pl.data.libero_hdf5 import demo_attributes, read_episodes
from rsd_pl.envs import PLACEMENT_FAR_M, PLACEMENT_MATCH_M, LiberoEnv
from rsd_pl.errors import RsdError

pytestmark = pytest.mark.libero
ARGS = ["--suite", "libero_spatial", "--tasks", "0", "--image_size", "32", "--cameras", "[agentview]"]


@pytest.fixture(scope="module")
def env():
    with LiberoEnv("libero_spatial", 0, camera_size=None, cameras=()) as env:
        yield env


def test_placements_are_reproducible_per_seed_and_leave_numpy_alone(env):
    np.random.seed(5)
    expected_draw = np.random.uniform()
    np.random.seed(5)
    first = env.sample_placement(1234)
    assert np.random.uniform() == expected_draw  # the global RNG is restored
    with LiberoEnv("libero_spatial", 0, camera_size=None, cameras=()) as other:  # a fresh env, same seed
        np.testing.assert_array_equal(other.sample_placement(1234), first)
    assert np.abs(env.sample_placement(1235) - first).max() > 1e-3


def test_an_episode_from_a_placement_seed_puts_the_fixtures_back_too(env):
    """LIBERO places fixtures (cabinet, stove) from numpy's RNG at every reset and no simulator state holds them:
    a reset from the same placement seed must give the same fixtures and state whatever ran before."""
    env.reset(None, placement_seed=7)
    fixtures, state = env.raw.sim.model.body_pos.copy(), env.sim_state()
    np.random.seed(99)
    env.reset(3)  # another episode in between, from another RNG state: its fixtures move
    assert np.abs(env.raw.sim.model.body_pos - fixtures).max() > 1e-3
    np.random.seed(123)
    env.reset(None, placement_seed=7)
    np.testing.assert_array_equal(env.raw.sim.model.body_pos, fixtures)
    np.testing.assert_array_equal(env.sim_state(), state)


def test_objects_on_fixtures_start_on_their_region_whatever_reset_came_before():
    """libero_spatial task 7 starts a bowl on the stove and one on the cabinet: LIBERO places them from the region
    site's world position, which after a soft reset still holds the previous reset's fixture pose (counted twice,
    the bowls started 0.9 m up and fell to the floor). A sampled placement is near the benchmark's and the same
    whatever episode ran before."""
    with LiberoEnv("libero_spatial", 7, camera_size=None, cameras=()) as env:
        bowls = env._free_joint_positions(np.stack(env.init_states))[:, :2]  # akita_black_bowl_1, _2: (50, 2, 3)
        np.random.seed(1)
        env.reset(0)
        first = env.sample_placement(42)
        np.random.seed(2)
        env.reset(5)  # another episode, other fixture poses
        again = env.sample_placement(42)
        np.testing.assert_array_equal(again, first)
        for seed in range(4):
            placement = env.sample_placement(seed)
            assert env.benchmark_distance(placement) < 0.04  # measured: 15-23 mm on this task, at most 34 mm anywhere
            start = env._free_joint_positions(placement)[:2]
            assert np.abs(start[:, 2] - bowls[:, :, 2].mean(0)).max() < 0.005  # on the stove / cabinet, not above


def test_a_placement_far_from_every_benchmark_state_stops_collection(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "PLACEMENT_FAR_M", 1e-6)  # every placement is "far"
    with pytest.raises(RsdError, match=r"libero_spatial task 0 placement 0 \(seed \d+\): an object lies 0\.0\d+ m"):
        collect.main([*ARGS, "--episodes", "1", "--placements", "sampled", "--workers", "1", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.hdf5"))


def test_demos_collected_from_far_placements_are_refused_on_resume(tmp_path):
    """Collections made before the fixture fix recorded each demo's distance; a rerun names them instead of
    adding to a file whose scenes the benchmark never shows."""
    from rsd_pl.data.synthetic import synthetic_demo

    cfg = collect.CollectConfig(suite="libero_spatial", tasks="0", image_size=32, cameras=["agentview"],
                                out=str(tmp_path), placements="sampled")
    with collect.open_writer(cfg, 0) as writer:
        demo = synthetic_demo(np.random.default_rng(0), 32)
        demo["obs"].pop("eye_in_hand_rgb", None)
        writer.add_demo(**demo, attrs={"placement": "sampled", "placement_index": 3, "placement_seed": 1,
                                       "benchmark_distance_m": 0.94, "expert": "pick_place", "grasp_side": 1})
    with pytest.raises(RsdError, match=rf"placements \[3\] lie more than {PLACEMENT_FAR_M} m .*delete the file"):
        collect.main([*ARGS, "--episodes", "2", "--placements", "sampled", "--out", str(tmp_path)])


def test_the_benchmark_distance_finds_the_benchmark_states(env):
    assert all(env.benchmark_distance(state) == 0.0 for state in env.init_states[:5])
    distances = [env.benchmark_distance(env.sample_placement(seed)) for seed in range(10)]
    assert min(distances) > PLACEMENT_MATCH_M  # LIBERO's regions are small: sampled states lie 1-2 cm away
    nudged = np.array(env.init_states[3], dtype=np.float64)
    nudged[1:] += 1e-5  # float noise on a benchmark state is still that state
    assert env.benchmark_distance(nudged) < PLACEMENT_MATCH_M


def test_sampled_collection_records_its_placements_and_is_reproducible(tmp_path, env):
    assert collect.main([*ARGS, "--episodes", "1", "--placements", "sampled", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.hdf5")
    (attrs,), (episode,) = demo_attributes(path), read_episodes(path)
    assert attrs["placement"] == "sampled" and attrs["placement_index"] == 0 and "init_state_index" not in attrs
    assert attrs["placement_seed"] == collect.placement_seed(0, 0, 0) != collect.placement_seed(0, 1, 0)
    placement = env.sample_placement(attrs["placement_seed"])  # the same seed draws the same placement again
    assert attrs["benchmark_distance_m"] == pytest.approx(env.benchmark_distance(placement))
    assert attrs["benchmark_distance_m"] > PLACEMENT_MATCH_M  # none of the benchmark's init states
    env.reset(None, placement_seed=attrs["placement_seed"])  # the demo's first state is where it settles
    import h5py

    with h5py.File(path) as f:
        first = f["data/demo_0/states"][0]
    np.testing.assert_array_equal(env.sim_state(), first)
    assert episode.attrs["num_samples"] == len(episode.actions)


def test_a_placement_equal_to_a_benchmark_state_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(collect, "PLACEMENT_MATCH_M", 1.0)  # every placement "is" a benchmark state
    out = tmp_path / "refused"
    argv = [*ARGS, "--episodes", "1", "--attempts", "2", "--placements", "sampled", "--out", str(out)]
    assert collect.main(argv) == 0
    assert not list(out.glob("*.hdf5"))  # nothing collected, no empty file left behind
    printed = "".join(capsys.readouterr())
    assert "placement 0 (a benchmark init state: refused)" in printed and "placement 1 (a benchmark" in printed


@pytest.mark.parametrize("extra, message", [
    (["--placements", "anywhere"], "--placements 'anywhere': use one of benchmark, sampled"),
    (["--placements", "sampled", "--init_states", "0-4"], "--init_states picks benchmark init states"),
    (["--attempts", "3"], "--attempts 3: a number >= 1, with --placements sampled only"),
])
def test_bad_placement_options_are_refused_before_simulating(tmp_path, extra, message):
    with pytest.raises(RsdError, match=message):
        collect.main([*ARGS, "--out", str(tmp_path), *extra])
    assert not list(tmp_path.iterdir())


def test_benchmark_and_sampled_demos_never_share_a_file(tmp_path):
    """A task file holding a demo from a benchmark init state (written as collect writes it) refuses sampled ones."""
    from rsd_pl.data.synthetic import synthetic_demo

    cfg = collect.CollectConfig(suite="libero_spatial", tasks="0", image_size=32, cameras=["agentview"],
                                out=str(tmp_path))
    with collect.open_writer(cfg, 0) as writer:
        demo = synthetic_demo(np.random.default_rng(0), 32)
        demo["obs"]["agentview_rgb"] = demo["obs"].pop("agentview_rgb")
        demo["obs"].pop("eye_in_hand_rgb", None)
        writer.add_demo(**demo, attrs={"init_state_index": 10, "expert": "pick_place", "grasp_side": 1})
    message = "holds 1 demos started from benchmark init states, but --placements is 'sampled'"
    with pytest.raises(RsdError, match=message):
        collect.main([*ARGS, "--episodes", "2", "--placements", "sampled", "--out", str(tmp_path)])
