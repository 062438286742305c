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


class RecordingEngine:
    """The real engine, recording each decoded chunk's actions (rows in batch order)."""

    def __init__(self, engine) -> None:
        self.engine, self.config, self.main = engine, engine.config, engine.main
        self.chunks: list[np.ndarray] = []

    def decode_chunk(self, batch: dict):
        result = self.engine.decode_chunk(batch)
        self.chunks.append(np.asarray(result.actions))
        return result


def test_parallel_envs_give_the_same_greedy_episodes_as_one_env(tmp_path):
    """num_envs = 2 (worker processes, observations decoded as one batch) vs one env in this process: the same
    actions chunk for chunk, the same outcome and steps, for the greedy modes (random-weight tiny models)."""
    import torch

    from rsd_pl.data.normalize import ActionNormalizer
    from rsd_pl.decoding import DecodingConfig, DecodingEngine
    from rsd_pl.eval.policy import RSDPolicy
    from rsd_pl.eval.runner import run_episode
    from rsd_pl.eval.vector import EnvPool, EnvSpec, run_batched
    from rsd_pl.models.backbone import BackboneConfig
    from rsd_pl.models.main_model import MainModel, MainModelConfig
    from rsd_pl.models.rfsq import ActionRFSQAE

    torch.manual_seed(0)
    sizes = dict(vision_hidden=16, vision_layers=1, vision_heads=2, vision_mlp=32, hidden=32, layers=1, heads=2,
                 kv_heads=1, mlp=64)
    main = MainModel(MainModelConfig(backbone=BackboneConfig(image_size=16, num_cameras=2, use_object_pos=True,
                                                             max_text_len=8, extra=sizes))).eval()
    tokenizer = ActionRFSQAE(hidden=16, num_hidden=1).eval()
    bounds = {k: [v] * 7 for k, v in (("q01", -1.0), ("q99", 1.0), ("mean", 0.0), ("std", 1.0), ("min", -1.0),
                                       ("max", 1.0))}
    normalizer = ActionNormalizer.from_dict({**bounds, "mask": [True] * 6 + [False]})
    items = [{"suite": "libero_spatial", "task_id": 0, "trial": trial, "seed": 7 + trial, "max_steps": 16,
              "record": False} for trial in (0, 1)]
    spec = EnvSpec(camera_size=32, cameras=("agentview", "eye_in_hand"), shadows=False, image_size=16,
                   image_pipeline="resize")
    for mode in ("ar", "parallel", "l1"):
        engine = DecodingEngine(main, tokenizer, normalizer, DecodingConfig(mode=mode))
        alone, alone_results = RecordingEngine(engine), []
        with LiberoEnv("libero_spatial", 0, camera_size=32, render_every_step=False) as env:
            for item in items:
                alone_results.append(run_episode(env, RSDPolicy(alone), 16, trial=item["trial"], seed=item["seed"],
                                                 mode=mode, image_size=16))
        together = RecordingEngine(engine)
        pool = EnvPool(2, spec)
        try:
            together_results = run_batched(pool, RSDPolicy(together), items, mode)
        finally:
            pool.close()
        assert [c.shape[0] for c in together.chunks] == [2] * 2  # both envs queried together, 2 chunks
        for episode in (0, 1):
            single = np.concatenate([c[0] for c in alone.chunks[2 * episode: 2 * episode + 2]])
            batched = np.concatenate([c[episode] for c in together.chunks])
            np.testing.assert_allclose(batched, single, atol=1e-4)  # float noise of batched matmuls
            a, b = alone_results[episode], together_results[episode]
            assert (a.status, a.steps, a.main_forwards) == (b.status, b.steps, b.main_forwards)


def test_env_workers_outlive_a_signal_to_the_process_group_and_close_with_the_pool():
    """Ctrl-C, `timeout` and a scheduler signal the whole process group. The workers must ignore SIGINT and SIGTERM
    (the main process stops between episodes and then closes them), and `close` must still end them."""
    import os
    import signal

    from rsd_pl.eval.vector import EnvPool, EnvSpec

    pool = EnvPool(1, EnvSpec(camera_size=None, cameras=(), shadows=False, image_size=16, image_pipeline="resize"))
    process = pool.processes[0]
    try:
        status, reply = pool.call([0], "no_such_command")[0]  # the worker is up and answers (its import done)
        assert status == "error" and "unknown worker command" in reply
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(process.pid, sig)
        status, reply = pool.call([0], "no_such_command")[0]
        assert process.is_alive() and status == "error", reply
    finally:
        pool.close()
    assert not process.is_alive() and process.exitcode == 0
    pool.close()  # twice: a no-op (the eval loop closes the pool, then the exit handler would again)
