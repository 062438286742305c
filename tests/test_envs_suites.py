"""Suite facts and index parsing of the env layer: pure logic, no LIBERO."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rsd_pl.envs import SUITES, WAIT_ACTION, WAIT_STEPS, check_index, env_kwargs, parse_index_list, suite_spec
from rsd_pl.errors import RsdError


def test_suite_table_matches_the_benchmark_protocol():
    assert {name: spec.max_steps for name, spec in SUITES.items() if spec.base is None} == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
    assert SUITES["libero_90"].num_tasks == 90 and SUITES["libero_spatial"].num_tasks == 10
    assert WAIT_STEPS == 10
    np.testing.assert_array_equal(WAIT_ACTION, [0, 0, 0, 0, 0, 0, -1])


def test_unknown_suite_names_the_valid_ones():
    with pytest.raises(RsdError, match="libero_spatial.*libero_90"):
        suite_spec("libero_spacial")


def test_index_out_of_range_names_the_range():
    assert check_index("task id", 9, 10) == 9
    with pytest.raises(RsdError, match=r"task id 10 out of range: valid are 0\.\.9"):
        check_index("task id", 10, 10)
    with pytest.raises(RsdError, match="init state index -1"):
        check_index("init state index", -1, 50)


@pytest.mark.parametrize("spec, expected", [
    ("0-3", [0, 1, 2, 3]), ("0,3,5", [0, 3, 5]), ("2, 0-1,2", [0, 1, 2]), (4, [4]), ([3, 1, 3], [1, 3])])
def test_parse_index_list(spec, expected):
    assert parse_index_list(spec) == expected


@pytest.mark.parametrize("spec", ["a", "3-1", "", "1,,2", "-2"])
def test_parse_index_list_rejects_bad_syntax(spec):
    with pytest.raises(RsdError, match="bad index list"):
        parse_index_list(spec)


def test_env_kwargs_cameras_off_disables_the_renderer():
    off = env_kwargs(None, ["agentview"])
    assert off["has_offscreen_renderer"] is False and off["use_camera_obs"] is False and off["camera_names"] == []
    on = env_kwargs(64, ["agentview", "eye_in_hand"])
    assert on["camera_names"] == ["agentview", "robot0_eye_in_hand"] and on["camera_heights"] == 64
    assert on["hard_reset"] is False


def test_importing_envs_does_not_import_libero():
    code = ("import sys, rsd_pl.envs, rsd_pl.experts, rsd_pl.collect; "
            "print('libero' in sys.modules, 'robosuite' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
