"""LIBERO-PRO's perturbed suites in `eval`: offered where the installed LIBERO ships their files, each with its
base suite's max steps and the instruction its perturbation sets; anything else is refused before any episode."""

from __future__ import annotations

import json

import pytest
from test_eval_loop import _cfg, _tiny_registry

from rsd_pl.envs.suites import PARAPHRASE, PRO_PERTURBATIONS, SUITES, suite_spec
from rsd_pl.eval.episodes import episode_list
from rsd_pl.eval.report import EPISODES_FILE


def test_each_benchmark_suite_has_its_four_perturbations_with_its_max_steps(tmp_path):
    for base in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        for perturbation in PRO_PERTURBATIONS:
            spec = suite_spec(f"{base}_{perturbation}")
            assert (spec.base, spec.perturbation, spec.num_tasks) == (base, perturbation, 10)
            assert spec.max_steps == SUITES[base].max_steps
            assert spec.libero == spec.name  # its own scene and init states
        paraphrase = suite_spec(f"{base}_{PARAPHRASE}")
        assert (paraphrase.base, paraphrase.libero, paraphrase.max_steps) == (base, base, SUITES[base].max_steps)
    assert len([s for s in SUITES.values() if s.base]) == 20
    items = episode_list(_cfg(tmp_path, suites=["libero_10_swap"], tasks="3", max_steps=None))
    assert [(i["suite"], i["max_steps"]) for i in items] == [("libero_10_swap", 520)]


@pytest.mark.libero
def test_instructions_follow_the_perturbation():
    from rsd_pl.envs.libero import task_info

    clean = task_info("libero_spatial", 1)
    assert task_info("libero_spatial_lan", 1).instruction == "take black bowl next to ramekin and place on plate"
    assert task_info("libero_spatial_swap", 1).instruction == clean.instruction  # only the scene changes
    assert task_info("libero_spatial_object", 1).instruction == clean.instruction
    assert task_info("libero_spatial_object", 1).goal == [["on", "black_bowl_1", "yellow_plate_1"]]
    assert task_info("libero_spatial_task", 1).instruction != clean.instruction


@pytest.mark.libero
def test_libero_pro_places_the_objects_anew_so_a_trial_is_not_the_clean_trial():
    """LIBERO-PRO ships its own init states: trial k of `libero_spatial_lan` is not trial k of `libero_spatial`, nor
    any of its 50 (the table pairs clean and perturbed by task and trial index, and says the placements differ)."""
    import numpy as np

    from rsd_pl.envs.libero import PLACEMENT_MATCH_M, LiberoEnv

    with LiberoEnv("libero_spatial", 0, camera_size=None) as clean, \
            LiberoEnv("libero_spatial_lan", 0, camera_size=None) as lan:
        assert np.shape(clean.init_states) == np.shape(lan.init_states)
        nearest = [clean.benchmark_distance(state) for state in lan.init_states[:10]]
    assert min(nearest) > PLACEMENT_MATCH_M, nearest  # none is a clean benchmark placement
    assert 0.005 < float(np.median(nearest)) < 0.05  # new draws from the same regions: cm away, not elsewhere


@pytest.mark.libero
def test_the_paraphrase_suite_is_the_clean_scene_and_init_states_with_the_lan_words():
    """`<suite>_paraphrase`: LIBERO-PRO's `_lan` BDDL differs from the clean one in its language line only (read
    here for every task of the four suites), so the clean scene and init states with `_lan`'s words is the wording
    alone."""
    import numpy as np

    from rsd_pl.envs.libero import LiberoEnv, num_init_states, task_info

    for base in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        for task in range(10):
            clean, lan = task_info(base, task), task_info(f"{base}_lan", task)
            changed = [pair for pair in zip(open(clean.bddl_file).read().splitlines(),
                                            open(lan.bddl_file).read().splitlines(), strict=True)
                       if pair[0] != pair[1]]
            assert len(changed) == 1 and changed[0][0].strip().startswith("(:language"), (base, task, changed)
            paraphrase = task_info(f"{base}_paraphrase", task)
            assert (paraphrase.bddl_file, paraphrase.goal) == (clean.bddl_file, clean.goal)
            assert paraphrase.instruction == lan.instruction != clean.instruction
    assert num_init_states("libero_spatial_paraphrase", 0) == 50
    with LiberoEnv("libero_spatial_paraphrase", 0, camera_size=None) as env, \
            LiberoEnv("libero_spatial", 0, camera_size=None) as clean_env:
        np.testing.assert_array_equal(np.stack(env.init_states), np.stack(clean_env.init_states))
        assert env.instruction == task_info("libero_spatial_lan", 0).instruction != clean_env.instruction


@pytest.mark.libero
def test_eval_runs_libero_pro_suites_for_a_few_steps(tmp_path, capsys):
    """The real command on a language and an object perturbation: 1 episode x 4 steps each, logged under the
    perturbed suite with its instruction; an unknown suite (LIBERO-PRO's `_env`, whose files are not installed)
    is refused before any episode."""
    from rsd_pl.__main__ import main as cli
    from rsd_pl.envs.libero import task_info

    _tiny_registry(tmp_path / "checkpoints")
    out = tmp_path / "run"
    common = ["--registry", str(tmp_path / "checkpoints"), "--main", "main@1", "--draft", "null", "--tasks", "0",
              "--num_trials", "1", "--modes", "[ar]", "--max_steps", "4", "--videos_per_task", "0",
              "--progress_bar", "false", "--accelerator", "cpu", "--camera_size", "16",
              "--allow_obs_mismatch", "true"]
    assert cli(["eval", "--suites", "[libero_spatial_env]", "--out", str(out), *common]) == 1
    error = capsys.readouterr().err
    assert "unknown LIBERO suite 'libero_spatial_env'" in error and "libero_spatial_lan" in error
    assert not (out / EPISODES_FILE).exists()

    assert cli(["eval", "--suites", "[libero_spatial_lan, libero_object_object, libero_object_paraphrase]",
                "--out", str(out), *common]) == 0
    records = [json.loads(line) for line in (out / EPISODES_FILE).read_text().splitlines()]
    assert sorted(r["suite"] for r in records) == ["libero_object_object", "libero_object_paraphrase",
                                                   "libero_spatial_lan"]
    assert next(r for r in records if r["suite"] == "libero_object_paraphrase")["instruction"] == task_info(
        "libero_object_lan", 0).instruction
    assert all(r["status"] == "timeout" and r["steps"] == 4 for r in records)
    lan = next(r for r in records if r["suite"] == "libero_spatial_lan")
    paraphrase, clean = task_info("libero_spatial_lan", 0).instruction, task_info("libero_spatial", 0).instruction
    assert lan["instruction"] == paraphrase != clean
    info = json.loads((out / "eval_info.json").read_text())
    assert sorted(t["task_group"] for t in info["per_task"]) == ["libero_object_object", "libero_object_paraphrase",
                                                                 "libero_spatial_lan"]
