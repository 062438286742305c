"""One LIBERO environment for (suite, task, init state, seed), and its observation conversion.

LIBERO and robosuite are imported inside `LiberoEnv.__init__` only, so `import rsd_pl.envs` stays
cheap. Rendering uses `MUJOCO_GL=egl` (CPU Mesa) unless the caller set something else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rsd_pl.data.obs import preprocess_images, proprio_from_raw, quat_to_axis_angle
from rsd_pl.envs.suites import PARAPHRASE, WAIT_ACTION, WAIT_STEPS, check_index, suite_spec
from rsd_pl.errors import RsdError

# our camera name -> (robosuite camera, HDF5 obs key as in the official datasets)
CAMERAS: dict[str, tuple[str, str]] = {
    "agentview": ("agentview", "agentview_rgb"),
    "eye_in_hand": ("robot0_eye_in_hand", "eye_in_hand_rgb"),
}
_GL_NOTICE_SHOWN = False


class _RepeatedNotices(logging.Filter):
    """Drops robosuite's "no private macro file" advice (three lines in every process that imports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("macro file" in message or "setup_macros.py" in message)


def ensure_mujoco_gl() -> None:
    """Set MUJOCO_GL=egl when unset (CPU rendering via Mesa) and say so once per process; quiet robosuite's
    import-time notices (the filter sits on robosuite's logger before robosuite creates its handlers)."""
    global _GL_NOTICE_SHOWN
    robosuite_logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, _RepeatedNotices) for f in robosuite_logger.filters):
        robosuite_logger.addFilter(_RepeatedNotices())
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl"
        if not _GL_NOTICE_SHOWN:
            print("[rsd_pl.envs] MUJOCO_GL was unset: using MUJOCO_GL=egl", file=sys.stderr)
            _GL_NOTICE_SHOWN = True


@functools.cache
def _benchmark(suite: str):
    """One LIBERO benchmark object per suite and process (it prints its task order when built)."""
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]()


@dataclass(frozen=True)
class TaskInfo:
    """What names a LIBERO task, without building its env."""

    suite: str
    task_id: int
    name: str
    instruction: str
    bddl_file: str            # absolute path of the installed BDDL file
    bddl_relpath: str         # "<suite folder>/<file>.bddl", portable across installs
    problem_name: str
    goal: list[list[str]]     # parsed BDDL goal, e.g. [['on', 'akita_black_bowl_1', 'plate_1']]


def task_info(suite: str, task_id: int) -> TaskInfo:
    """The task's name, instruction and BDDL file (RsdError for an unknown suite or task id)."""
    spec = suite_spec(suite)
    check_index(f"task id for {suite}", task_id, spec.num_tasks)
    ensure_mujoco_gl()
    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    def parsed(name: str):
        task = _benchmark(name).get_task(task_id)
        relpath = os.path.join(task.problem_folder, task.bddl_file)
        path = os.path.join(get_libero_path("bddl_files"), relpath)
        return task, relpath, path, robosuite_parse_problem(path)

    if spec.perturbation == PARAPHRASE:  # the clean task, with the words of LIBERO-PRO's `_lan` (suites.PARAPHRASE)
        clean = task_info(spec.base, task_id)
        return dataclasses.replace(clean, suite=suite, instruction=task_info(f"{spec.base}_lan", task_id).instruction)
    task, relpath, bddl_file, problem = parsed(suite)
    instruction = task.language  # the benchmark's instruction, as OpenVLA-OFT's evaluation gives it
    if spec.base is not None:
        # LIBERO-PRO keeps the base task's name (and so `task.language`) and perturbs inside the BDDL file: where
        # the perturbation changed the file's instruction (lan, task), that is the instruction; where it did not
        # (object, swap), the policy gets the clean instruction, so only the scene changes.
        base_problem = parsed(spec.base)[3]
        if _bddl_instruction(problem) != _bddl_instruction(base_problem):
            instruction = _bddl_instruction(problem)
    return TaskInfo(suite, task_id, task.name, instruction, bddl_file, relpath, problem["problem_name"],
                    [list(g) for g in problem["goal_state"]])


def _bddl_instruction(problem: dict) -> str:
    text = problem["language_instruction"]
    return (text if isinstance(text, str) else " ".join(text)).strip()


def num_init_states(suite: str, task_id: int) -> int:
    """How many benchmark init states the task ships (50 for the benchmark suites)."""
    spec = suite_spec(suite)
    check_index(f"task id for {suite}", task_id, spec.num_tasks)
    ensure_mujoco_gl()
    return len(_benchmark(spec.libero).get_task_init_states(task_id))


@contextlib.contextmanager
def _numpy_seeded(seed: int):
    """numpy's global RNG seeded with `seed` inside, restored after (LIBERO's placement initialisers draw from it)."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


PLACEMENT_MATCH_M = 0.001
"""A sampled placement whose every movable object lies within 1 mm of one benchmark init state's is that init state
(`LiberoEnv.benchmark_distance`); collection refuses it. LIBERO's placement regions are small: two of a task's 50
benchmark init states differ by 2.3-20 mm at the closest (largest object displacement; 2 tasks per suite measured),
and a sampled placement lies as far from its nearest benchmark state as they lie from each other (3.1-21 mm), so
1 mm is an order below any real difference and far above float noise."""

PLACEMENT_FAR_M = 0.1
"""A sampled placement with a movable object more than 10 cm from where every benchmark init state has it is not
a placement of the task's regions: collection stops with an error rather than record it. Measured over all four
suites (10 tasks each, 6 seeds), every sampled placement lies within 34 mm of a benchmark init state (libero_10
task 0: 24-33 mm; libero_object: 3-9 mm); a fixture pose counted twice put objects 0.9-1.0 m away."""

SHADOWS = False
"""Default render setting of collection and evaluation (see LiberoEnv); demo files record it."""


def env_kwargs(camera_size: int | None, cameras: Sequence[str]) -> dict:
    """The robosuite keyword arguments of a LiberoEnv (camera observations on whenever there are cameras;
    LiberoEnv decides per step whether they really render)."""
    names = [CAMERAS[c][0] for c in cameras] if camera_size is not None else []
    kwargs = {"controller": "OSC_POSE", "control_freq": 20, "hard_reset": False, "camera_names": names,
              "has_offscreen_renderer": bool(names), "use_camera_obs": bool(names)}
    if names:
        kwargs.update(camera_heights=camera_size, camera_widths=camera_size)
    return kwargs


class LiberoEnv:
    """A LIBERO task env with the benchmark's init states (`hard_reset=False`).

    `camera_size=None` turns rendering off entirely (no offscreen renderer): images are then absent.
    """

    def __init__(self, suite: str, task_id: int, *, camera_size: int | None = 128,
                 cameras: Sequence[str] = ("agentview", "eye_in_hand"), seed: int = 0,
                 shadows: bool = SHADOWS, render_every_step: bool = True) -> None:
        """shadows: MuJoCo shadows and reflections. Off by default: CPU rendering (Mesa llvmpipe) is
        about 1.6x faster without them (measured 7.2 -> 11.9 steps/s, one 64 px camera). Demos record
        the setting in `env_args`, so collection and evaluation render the same way; turn it on to
        match the official LIBERO datasets' look.
        render_every_step: False renders camera frames only in the steps that ask for them
        (`step(action, render=True)`, and the last wait step of `reset`). The frames are still taken by
        robosuite's own camera observables, at the same physics substep as in a step that renders every
        time (what `collect` stores): only the other steps' renders are skipped (`_gate_cameras`)."""
        spec = suite_spec(suite)
        check_index(f"task id for {suite}", task_id, spec.num_tasks)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise RsdError(f"unknown camera(s) {unknown}; valid: {', '.join(CAMERAS)}")
        if camera_size is not None and camera_size <= 0:
            raise RsdError(f"camera_size must be a positive int or None, got {camera_size}")
        ensure_mujoco_gl()
        from libero.libero.envs.env_wrapper import ControlEnv

        self.info = info = task_info(suite, task_id)
        self.suite, self.task_id, self.max_steps = suite, task_id, spec.max_steps
        self.task_name, self.instruction, self.bddl_file = info.name, info.instruction, info.bddl_file
        self.init_states = _benchmark(spec.libero).get_task_init_states(task_id)  # (num_init_states, S)
        self.cameras = tuple(cameras) if camera_size is not None else ()
        self.camera_size = camera_size
        kwargs = env_kwargs(camera_size, self.cameras)
        self._env = ControlEnv(bddl_file_name=self.bddl_file, **kwargs)
        self._env.seed(seed)
        self.shadows = shadows
        self.render_every_step = render_every_step
        self._render_now = True  # whether the camera observables render in the current step
        self._frames_real = False  # whether the last returned obs holds rendered frames
        self._fixture_home: dict[int, tuple[np.ndarray, np.ndarray]] | None = None  # see _home_fixtures
        self._gate_cameras()
        self.goal: list[list[str]] = [list(g) for g in self._env.env.parsed_problem["goal_state"]]

    # --- facts -------------------------------------------------------------------------------
    @property
    def num_init_states(self) -> int:
        return len(self.init_states)

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(CAMERAS[c][1] for c in self.cameras)

    @property
    def raw(self):
        """The robosuite env underneath (`env.raw.sim`, `env.raw.parsed_problem`, ...)."""
        return self._env.env

    @property
    def problem_info(self) -> dict:
        return {"language_instruction": self.instruction, "problem_name": self._env.problem_name,
                "domain_name": self._env.domain_name}

    # --- episode -----------------------------------------------------------------------------
    def reset(self, init_state_index: int | None, wait: bool = True, *, placement_seed: int | None = None) -> dict:
        """Load benchmark init state `init_state_index`, or with `init_state_index=None` the placement that
        `sample_placement(placement_seed)` draws, fixtures included (LIBERO places fixtures such as the cabinet
        from numpy's RNG at every reset, and a simulator state does not hold them: only a reset seeded the same
        way puts them back); with `wait`, run WAIT_STEPS no-op steps."""
        if init_state_index is None:
            if placement_seed is None:
                raise RsdError("LiberoEnv.reset: give an init state index or a placement seed")
            with self._drawing_placement(placement_seed):
                return self._reset_to(None, wait)  # the seeded reset itself places everything
        check_index(f"init state index for {self.suite} task {self.task_id}", init_state_index,
                    self.num_init_states)
        return self._reset_to(self.init_states[init_state_index], wait)

    def _reset_to(self, target: np.ndarray | None, wait: bool) -> dict:
        """Reset, then load `target` (None: the state the reset itself placed)."""
        self._env.reset()
        if target is None:
            target = self.sim_state()
        self._reset_gripper_commands()
        self._set_render_flags()
        self._render_now = self.render_every_step or not wait
        obs = self._env.set_init_state(target)
        self._frames_real = self._render_now
        for i in range(WAIT_STEPS if wait else 0):
            obs, _, _, _ = self.step(WAIT_ACTION.copy(), render=i == WAIT_STEPS - 1)
        return obs

    def sample_placement(self, seed: int) -> np.ndarray:
        """A fresh placement of the task's objects, drawn by LIBERO's own sampler from the BDDL's regions (its
        placement initialisers draw from numpy's global RNG at reset; seeded here with `seed`, then restored):
        the flattened simulator state, the form of a benchmark init state (`reset(None, placement_seed=seed)` starts
        an episode from it)."""
        with self._drawing_placement(seed):
            self._env.reset()
            return np.asarray(self.raw.sim.get_state().flatten(), dtype=np.float64).copy()

    @contextlib.contextmanager
    def _drawing_placement(self, seed: int):
        """Inside: numpy's global RNG seeded with `seed` (restored after) and the fixtures at their XML pose, so
        the next reset draws placement `seed` exactly, whatever ran before."""
        with _numpy_seeded(seed):
            self._home_fixtures()
            yield

    def _home_fixtures(self) -> None:
        """Put every fixture's root body back at its pose in the scene's XML, as a hard reset would, before a
        reset that samples a placement (benchmark resets load their objects' state afterwards and skip this, so
        their RNG stream and fixture poses stay as before). LIBERO places an object on a fixture's region (the
        bowl on the stove, in the drawer, on the cabinet) at the fixture's sampled pose plus the region site's world
        position, which holds the fixture's pose only after a hard reset. With `hard_reset=False` the site still
        carries the previous reset's fixture pose, which then counts twice: the bowl starts about 0.9 m above the
        stove and falls to the floor. Hand-written: LIBERO has no switch for it, and a hard reset would rebuild the
        renderer and its observables at every episode."""
        if self._fixture_home is None:
            self._fixture_home = {}
            for fixture in self.raw.fixtures_dict.values():
                body = self.raw.model.worldbody.find(f".//body[@name='{fixture.root_body}']")
                pos, quat = body.get("pos", "0 0 0"), body.get("quat", "1 0 0 0")
                self._fixture_home[self.raw.sim.model.body_name2id(fixture.root_body)] = (
                    np.array(pos.split(), dtype=np.float64), np.array(quat.split(), dtype=np.float64))
        for body_id, (pos, quat) in self._fixture_home.items():
            self.raw.sim.model.body_pos[body_id] = pos
            self.raw.sim.model.body_quat[body_id] = quat

    def _free_joint_positions(self, states: np.ndarray) -> np.ndarray:
        """xyz of every free-joint body (the movable objects) in flattened simulator states: (..., J, 3)."""
        model = self.raw.sim.model
        starts = [int(model.jnt_qposadr[j]) for j in range(model.njnt) if int(model.jnt_type[j]) == 0]  # mjJNT_FREE
        qpos = np.asarray(states, dtype=np.float64)[..., 1:1 + model.nq]  # a flattened state: time, qpos, qvel
        return np.stack([qpos[..., a:a + 3] for a in starts], axis=-2)

    def benchmark_distance(self, state: np.ndarray) -> float:
        """How far a placement is from the nearest of the task's benchmark init states: for each init state the
        largest displacement of any movable object (metres), and the smallest of those over the init states. 0 for
        a benchmark init state itself; a placement is one of them when this is below PLACEMENT_MATCH_M."""
        mine = self._free_joint_positions(state)                        # (J, 3)
        theirs = self._free_joint_positions(np.stack(self.init_states))  # (B, J, 3)
        return float(np.linalg.norm(theirs - mine, axis=-1).max(axis=-1).min())

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, float, bool, dict]:
        """One env step with a 7-D action in [-1, 1] (OSC_POSE deltas, gripper -1 open / +1 close).
        render: take this step's camera frames (always when render_every_step; a policy executing chunks
        open loop needs them only in the step before its next query)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"expected a 7-D action, got shape {action.shape}")
        self._render_now = self.render_every_step or render
        out = self._env.step(action)
        self._frames_real = self._render_now
        return out

    def _reset_gripper_commands(self) -> None:
        """A soft reset (hard_reset=False) keeps robosuite's gripper command (`gripper.current_action`, which
        each step moves by speed x sign(action)): an episode would start from the gripper state the previous
        one left. Zero it, as a freshly built env has it. The arm controller is rebuilt by the reset itself
        and the physics data zeroed (mj_resetData), so nothing else carries over."""
        for robot in self.raw.robots:
            if robot.has_gripper:
                robot.gripper.current_action = np.zeros(robot.gripper.dof)

    def _gate_cameras(self) -> None:
        """Wrap the camera observables' sensors: they render only while `_render_now`, else return a blank.
        The observables' sampling timers run every step either way, so a rendered frame is taken at exactly
        the substep where an every-step render takes it (robosuite samples cameras inside `step`, not at
        its end). No library offers this; it is a few lines over robosuite's Observable."""
        for camera in self.cameras:
            observable = self.raw._observables.get(f"{CAMERAS[camera][0]}_image")
            if observable is None:
                continue
            sensor = observable._sensor
            blank = np.zeros((self.camera_size, self.camera_size, 3), dtype=np.uint8)

            @functools.wraps(sensor)  # keeps robosuite's sensor attributes (__modality__)
            def gated(obs_cache, sensor=sensor, blank=blank):
                return sensor(obs_cache) if self._render_now else blank

            observable._sensor = gated

    def _set_render_flags(self) -> None:
        """Shadows/reflections on the offscreen context (robosuite may rebuild it on reset)."""
        context = getattr(self.raw.sim, "_render_context_offscreen", None)
        if context is None:
            return
        import mujoco

        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            context.scn.flags[flag] = int(self.shadows)

    def frame(self, obs: dict, camera: str, size: int | None = None) -> np.ndarray:
        """Raw frame uint8 (S, S, 3) of a camera, upside down as LIBERO renders: taken from `obs`
        when the step rendered it, else rendered now from the current simulator state (end of the
        step: about 2% of pixels differ from the step's own frame, see `_gate_cameras`). `size`: another
        side than the observation's (videos), always rendered now."""
        name = CAMERAS[camera][0]
        size = size or self.camera_size
        if size == self.camera_size and f"{name}_image" in obs and self._frames_real:
            return np.asarray(obs[f"{name}_image"], dtype=np.uint8)
        return np.asarray(self.raw.sim.render(camera_name=name, width=size, height=size), dtype=np.uint8)

    def success(self) -> bool:
        """The env's own success check (all goal predicates hold)."""
        return bool(self._env.check_success())

    def sim_state(self) -> np.ndarray:
        return np.asarray(self._env.get_sim_state(), dtype=np.float64)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- privileged state --------------------------------------------------------------------
    def goal_pair(self) -> tuple[str, str]:
        """(object, target) of the first goal predicate, e.g. ('akita_black_bowl_1', 'plate_1').

        A unary predicate (`open`, `turnon`, ...) names one entity: it is then both object and target.
        """
        args = self.goal[0][1:]
        return args[0], args[-1]

    def entity_pos(self, name: str) -> np.ndarray:
        """World xyz of an object/fixture body or a region site named in the BDDL."""
        raw = self.raw
        if name in raw.obj_body_id:
            return np.array(raw.sim.data.body_xpos[raw.obj_body_id[name]], dtype=np.float64)
        if name in raw.object_sites_dict:
            site_id = raw.sim.model.site_name2id(raw.object_sites_dict[name].name)
            return np.array(raw.sim.data.site_xpos[site_id], dtype=np.float64)
        raise RsdError(f"{self.task_name}: no object, fixture or region named {name!r} in the scene")

    def object_pos(self) -> np.ndarray:
        """(6,) float32: world xyz of the goal's object, then of its target."""
        obj, target = self.goal_pair()
        return np.concatenate([self.entity_pos(obj), self.entity_pos(target)]).astype(np.float32)

    # --- observation conversion --------------------------------------------------------------
    def record(self, obs: dict) -> dict[str, np.ndarray]:
        """One step of the HDF5 `obs` group, raw (images upside down as rendered)."""
        ee_pos = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        ee_ori = quat_to_axis_angle(obs["robot0_eef_quat"]).astype(np.float64)
        out = {CAMERAS[c][1]: self.frame(obs, c) for c in self.cameras}
        out.update(ee_pos=ee_pos, ee_ori=ee_ori, ee_states=np.concatenate([ee_pos, ee_ori]),
                   gripper_states=np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64),
                   joint_states=np.asarray(obs["robot0_joint_pos"], dtype=np.float64),
                   object_pos=self.object_pos())
        return out

    def robot_state(self, obs: dict) -> np.ndarray:
        """(9,) as upstream's create_dataset.py: gripper qpos (2), eef pos (3), eef quat (4)."""
        return np.concatenate([obs["robot0_gripper_qpos"], obs["robot0_eef_pos"], obs["robot0_eef_quat"]])

    def batch(self, obs: dict, image_size: int, image_pipeline: str = "resize") -> dict:
        """The model batch of docs/contracts.md with B = 1 (images upright, 8-D proprio); the images go
        through `preprocess_images(frames, image_size, image_pipeline)`, as in training."""
        proprio = proprio_from_raw(obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"])
        batch = {"proprio": torch.from_numpy(proprio)[None],                      # (1, 8)
                 "object_pos": torch.from_numpy(self.object_pos())[None],         # (1, 6)
                 "instruction": [self.instruction]}
        if self.cameras:
            frames = np.stack([self.frame(obs, c) for c in self.cameras])  # (V, S0, S0, 3)
            batch["images"] = preprocess_images(frames, image_size, image_pipeline)[None]  # (1, V, 3, S, S)
        return batch
