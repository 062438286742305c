"""LIBERO environments. Importing this package never imports LIBERO (see `LiberoEnv`)."""

from rsd_pl.envs.libero import (
    CAMERAS,
    PLACEMENT_FAR_M,
    PLACEMENT_MATCH_M,
    SHADOWS,
    LiberoEnv,
    TaskInfo,
    ensure_mujoco_gl,
    env_kwargs,
    num_init_states,
    task_info,
)
from rsd_pl.envs.suites import (
    SUITES,
    WAIT_ACTION,
    WAIT_STEPS,
    SuiteSpec,
    check_index,
    parse_index_list,
    suite_spec,
)

__all__ = [
    "CAMERAS", "PLACEMENT_FAR_M", "PLACEMENT_MATCH_M", "SHADOWS", "SUITES", "WAIT_ACTION", "WAIT_STEPS",
    "LiberoEnv", "SuiteSpec", "check_index",
    "TaskInfo", "ensure_mujoco_gl", "env_kwargs", "num_init_states", "parse_index_list", "suite_spec", "task_info",
]
