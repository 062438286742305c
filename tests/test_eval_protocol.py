"""The evaluation protocol on real LIBERO: episodes do not depend on what ran before them, and the frames the
policy sees are the ones `collect` stores for the same state (one env alive at a time: two render contexts in
one process render differently, so each env is closed before the next is built)."""

from __future__ import annotations

import numpy as np
import pytest

from rsd_pl.envs import LiberoEnv

pytestmark = pytest.mark.libero


def scripted_actions(seed: int, steps: int) -> np.ndarray:
    """Random motions with the gripper closing and opening: [steps, 7] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    actions = np.clip(rng.normal(0.0, 0.5, (steps, 7)), -1, 1)
    actions[:, 6] = np.where(rng.random(steps) > 0.5, 1.0, -1.0)
    return actions


def sim_trajectory(env: LiberoEnv, init_state: int, actions: np.ndarray) -> np.ndarray:
    env.reset(init_state)
    states = []
    for action in actions:
        env.step(action, render=False)
        states.append(env.sim_state())
    return np.stack(states)


def test_an_episode_is_the_same_alone_or_after_another_episode():
    """A soft reset used to keep the gripper command of the previous episode (robosuite's
    `gripper.current_action`): the same actions then led elsewhere. Now the whole trajectory is bit-identical."""
    target, other = scripted_actions(0, 40), scripted_actions(1, 40)
    other[-10:, 6] = 1.0  # leave the gripper command fully closed
    with LiberoEnv("libero_spatial", 1, camera_size=None) as env:
        alone = sim_trajectory(env, 3, target)
    with LiberoEnv("libero_spatial", 1, camera_size=None) as env:
        sim_trajectory(env, 0, other)
        left_behind = env.raw.robots[0].gripper.current_action.copy()
        after = sim_trajectory(env, 3, target)
    assert np.abs(left_behind).max() > 0.5  # the first episode did leave a gripper command behind
    assert np.array_equal(alone, after)


def test_eval_frames_equal_the_frames_collect_stores():
    """Eval renders only the step before a query; those frames equal an every-step render's (what demos store)."""
    actions = scripted_actions(2, 24)

    def query_frames(render_every_step: bool) -> list[np.ndarray]:
        with LiberoEnv("libero_spatial", 0, camera_size=64, render_every_step=render_every_step) as env:
            obs = env.reset(5)
            frames = [np.stack([env.frame(obs, c) for c in env.cameras])]
            for t, action in enumerate(actions):
                query_next = t % 8 == 7
                obs, _, _, _ = env.step(action, render=query_next)
                if query_next:
                    frames.append(np.stack([env.frame(obs, c) for c in env.cameras]))
        return frames

    stored, evaluated = query_frames(True), query_frames(False)
    assert len(stored) == len(evaluated) == 4
    for a, b in zip(stored, evaluated, strict=True):
        assert np.array_equal(a, b)
