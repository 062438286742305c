"""`collect`: argument validation and job scheduling (no LIBERO), then one real demo, resume, bad input."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import h5py
import numpy as np
import pytest

from rsd_pl.collect import CollectConfig, Job, _run_jobs, build_parser, main, pending_init_states
from rsd_pl.data.libero_hdf5 import read_episodes, validate_file
from rsd_pl.envs import parse_index_list
from rsd_pl.errors import RsdError
from rsd_pl.experts.rollout import ExpertEpisode


@pytest.mark.parametrize("field, value, match", [
    ("cameras", ["wristcam"], "--cameras"), ("episodes", 0, "--episodes"), ("workers", 0, "--workers"),
    ("suite", "libero_100x", "unknown LIBERO suite")])
def test_config_validation(field, value, match):
    cfg = CollectConfig(**{field: value})
    with pytest.raises(RsdError, match=match):
        cfg.validate()


def test_pending_init_states_skips_done_and_checks_range():
    assert pending_init_states(None, {0, 2}, 5, "t") == [1, 3, 4]
    assert pending_init_states("3-5", {4}, 50, "t") == [3, 5]
    with pytest.raises(RsdError, match=r"init state index for t 50 out of range: valid are 0\.\.49"):
        pending_init_states("48-50", set(), 50, "t")


def _fake_submit(outcomes: dict[int, bool], width: int, calls: list[int]):
    def submit(job: Job) -> Future:
        calls.append(job.init_state_index)
        future: Future = Future()
        future.set_result(ExpertEpisode(job.init_state_index, outcomes[job.init_state_index], 1, np.zeros((1, 7))))
        return future
    submit.width = width
    return submit


@pytest.mark.parametrize("width", [1, 3])
def test_run_jobs_stops_at_the_needed_successes(width):
    outcomes = {0: True, 1: False, 2: True, 3: True, 4: True}
    jobs = [Job("libero_spatial", 0, i, 64, ("agentview",), None, 0) for i in outcomes]
    calls: list[int] = []
    episodes = list(_run_jobs(jobs, 2, _fake_submit(outcomes, width, calls)))
    assert [e.init_state_index for e in episodes if e.success] == [0, 2]
    assert calls == [0, 1, 2]   # never more in flight than the successes still missing


def test_run_jobs_yields_in_init_state_order_when_later_jobs_finish_first():
    """demo_i must name the same init state in every run (the train/val split is by demo index)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    finish_order: list[int] = []

    def episode(index: int) -> ExpertEpisode:
        time.sleep(0.3 if index % 2 == 0 else 0.0)  # even init states finish after their odd neighbours
        finish_order.append(index)
        return ExpertEpisode(index, True, 1, np.zeros((1, 7)))

    with ThreadPoolExecutor(2) as pool:
        def submit(job: Job) -> Future:
            return pool.submit(episode, job.init_state_index)
        submit.width = 2
        jobs = [Job("libero_spatial", 0, i, 64, ("agentview",), None, 0) for i in range(4)]
        episodes = list(_run_jobs(jobs, 4, submit))
    assert finish_order[:2] == [1, 0]  # the pool really finished out of order
    assert [e.init_state_index for e in episodes] == [0, 1, 2, 3]


def _args(out: Path, *extra: str) -> list[str]:
    return ["--suite", "libero_spatial", "--tasks", "0", "--episodes", "1", "--out", str(out),
            "--image_size", "64", *extra]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    assert main(_args(out)) == 0
    (path,) = sorted(out.glob("*_demo.hdf5"))
    return out, path


@pytest.mark.libero
def test_collect_writes_a_readable_libero_file(collected):
    out, path = collected
    assert path.name == "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate_demo.hdf5"
    validate_file(path)
    (episode,) = read_episodes(path)
    steps = len(episode)
    assert episode.images["agentview_rgb"].shape == (steps, 64, 64, 3)
    assert episode.images["eye_in_hand_rgb"].shape == (steps, 64, 64, 3)
    assert episode.proprio.shape == (steps, 8) and episode.object_pos.shape == (steps, 6)
    assert episode.attrs["init_state_index"] == 0 and episode.instruction.startswith("pick up the black bowl")
    assert episode.attrs["expert"] == "pick_place"
    with h5py.File(path) as f:
        demo = f["data/demo_0"]
        assert demo["states"].shape[0] == steps and demo["robot_states"].shape == (steps, 9)
        assert demo["rewards"][-1] == 1 and demo["dones"][-1] == 1


@pytest.mark.libero
def test_rerun_keeps_finished_demos(collected, capsys):
    out, path = collected
    before = path.stat().st_mtime_ns, len(read_episodes(path))
    assert main(_args(out)) == 0
    assert "+0 demos, 0 failed" in capsys.readouterr().out
    assert len(read_episodes(path)) == before[1]


@pytest.mark.libero
def test_other_schema_or_corrupted_file_is_refused(collected, tmp_path):
    out, path = collected
    size = path.stat().st_size
    with pytest.raises(RsdError, match="different env_args"):
        main(_args(out, "--image_size", "32"))
    with pytest.raises(RsdError, match="different env_args"):
        main(_args(out, "--cameras", "[agentview]"))
    assert path.stat().st_size == size and len(read_episodes(path)) == 1
    broken = tmp_path / path.name
    broken.write_bytes(path.read_bytes()[: size // 3])
    with pytest.raises(RsdError, match="corrupted or partial"):
        main(_args(tmp_path))
    assert broken.stat().st_size == size // 3


@pytest.mark.libero
def test_bad_task_or_init_state_is_an_error_before_simulating(tmp_path):
    with pytest.raises(RsdError, match=r"task id for libero_spatial 12 out of range"):
        main(["--tasks", "12", "--out", str(tmp_path)])
    with pytest.raises(RsdError, match=r"init state index .* 50 out of range: valid are 0\.\.49"):
        main(["--tasks", "0", "--init_states", "48-50", "--out", str(tmp_path)])
    with pytest.raises(RsdError, match=r"libero_90 task 39 \('turn off the stove'\): goal "
                                        r"\[\['turnoff', 'flat_stove_1'\]\]: no scripted expert for it"):
        main(["--suite", "libero_90", "--tasks", "39", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("config", sorted(Path(__file__).parents[1].glob("configs/collect*.yaml")))
def test_collect_configs_parse_and_validate(config):
    values = build_parser().parse_args(["--config", str(config)]).as_dict()
    values.pop("config")
    cfg = CollectConfig(**values)
    cfg.validate()
    assert parse_index_list(cfg.tasks)


def _demo_episode(index: int, success: bool) -> ExpertEpisode:
    steps = 4
    return ExpertEpisode(index, success, steps, np.zeros((steps, 7)), np.zeros((steps, 5)), np.zeros((steps, 9)),
                         {"ee_pos": np.zeros((steps, 3)), "ee_ori": np.zeros((steps, 3)),
                          "gripper_states": np.zeros((steps, 2))})


@pytest.fixture
def offline_task(monkeypatch, tmp_path):
    """collect_task against a plain DemoWriter in tmp_path (no LIBERO): 4 init states."""
    import rsd_pl.collect as collect
    from rsd_pl.data.demo_writer import DemoWriter

    path = tmp_path / "task_demo.hdf5"
    monkeypatch.setattr(collect, "open_writer", lambda cfg, task_id: DemoWriter(
        path, env_name="e", problem_info={"language_instruction": "pick"}, bddl_file_name="b", env_args={}))
    monkeypatch.setattr(collect, "num_init_states", lambda suite, task_id: 4)
    return collect, path


def _submitter(outcomes: dict[int, bool | BaseException]):
    def submit(job: Job) -> Future:
        outcome = outcomes[job.init_state_index]
        if isinstance(outcome, BaseException):
            raise outcome
        future: Future = Future()
        future.set_result(_demo_episode(job.init_state_index, outcome))
        return future
    submit.width = 1
    return submit


def test_a_task_without_any_demo_leaves_no_file(offline_task):
    collect, path = offline_task
    added, failed = collect.collect_task(CollectConfig(episodes=2), 0, _submitter(dict.fromkeys(range(4), False)),
                                         _NoBar())
    assert (added, failed) == (0, 4) and not path.exists()


def test_an_interrupt_keeps_finished_demos_and_a_rerun_skips_them(offline_task):
    collect, path = offline_task
    outcomes = {0: True, 1: KeyboardInterrupt(), 2: True, 3: True}
    with pytest.raises(KeyboardInterrupt):
        collect.collect_task(CollectConfig(episodes=3), 0, _submitter(outcomes), _NoBar())
    assert [e.attrs["init_state_index"] for e in read_episodes(path)] == [0]
    outcomes[1] = False
    assert collect.collect_task(CollectConfig(episodes=3), 0, _submitter(outcomes), _NoBar()) == (2, 1)
    assert [e.attrs["init_state_index"] for e in read_episodes(path)] == [0, 2, 3]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass


def test_grasp_side_per_demo_is_reproducible_and_checked():
    from rsd_pl.collect import CollectConfig, allowed_sides, grasp_side_for

    cfg = CollectConfig(grasp_side="random", seed=0)
    sides = [grasp_side_for(cfg, 0, i) for i in range(40)]
    assert sides == [grasp_side_for(cfg, 0, i) for i in range(40)] and set(sides) == {1, -1}
    assert 10 < sides.count(1) < 30 and allowed_sides(cfg) == {1, -1}
    assert grasp_side_for(CollectConfig(grasp_side="-x"), 0, 5) == -1
    assert allowed_sides(CollectConfig(grasp_side="centre")) == {0}
    with pytest.raises(RsdError, match="--grasp_side 'left'"):
        CollectConfig(grasp_side="left").validate()


@pytest.mark.libero
def test_a_worker_closes_its_env_before_egl_is_gone():
    """A collect worker that moved to a second task holds that task's env until it exits; left to the garbage
    collector at interpreter shutdown, its render context frees itself after EGL is gone and prints EGLError
    tracebacks (measured: two per worker without the close at exit)."""
    import subprocess
    import sys

    script = ("from rsd_pl import collect\n"
              "for task in (0, 1):\n"
              "    env = collect.worker_env(collect.Job('libero_spatial', task, 0, 32, ('agentview',), None, 0))\n"
              "    env.reset(0)\n"
              "print('two envs', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "two envs" in done.stdout, done.stderr[-2000:]
    assert "EGLError" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-2000:]
