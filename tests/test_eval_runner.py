"""The episode protocol in isolation: stub env and stub policy (no LIBERO, no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd_pl.decoding.stats import ChunkStats, StatsAggregator
from rsd_pl.errors import RsdError
from rsd_pl.eval.runner import run_episode, to_env_action


class StubEnv:
    """Succeeds after `succeed_at` steps (never if None); records what it was given."""

    suite, task_id, task_name, instruction = "libero_spatial", 3, "task_three", "put the bowl on the plate"

    def __init__(self, succeed_at: int | None, images: bool = False) -> None:
        self.succeed_at, self.images = succeed_at, images
        self.steps, self.actions, self.resets, self.renders = 0, [], [], []

    def reset(self, init_state_index: int, wait: bool = True) -> dict:
        self.resets.append((init_state_index, wait))
        self.steps = 0
        return {"t": 0}

    def step(self, action: np.ndarray, render: bool = True):
        self.renders.append(render)
        self.actions.append(action)
        self.steps += 1
        return {"t": self.steps}, 0.0, False, {}

    def success(self) -> bool:
        return self.succeed_at is not None and self.steps >= self.succeed_at

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return ("agentview_rgb", "eye_in_hand_rgb") if self.images else ()

    def record(self, obs: dict) -> dict[str, np.ndarray]:
        frame = np.zeros((12, 12, 3), dtype=np.uint8)
        frame[-1, -1] = 200  # bottom-right as rendered = top-left once upright
        return {"agentview_rgb": frame, "eye_in_hand_rgb": frame, "ee_pos": np.zeros(3)}

    def batch(self, obs: dict, image_size: int, image_pipeline: str = "resize") -> dict:
        return {"proprio": torch.zeros(1, 8), "instruction": [self.instruction]}


class StubPolicy:
    """Serves chunks of 8 constant actions; one ChunkStats per chunk, kept across episodes like
    RSDPolicy; can raise at a given step."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.raise_at, self.calls, self.stats = raise_at, 0, StatsAggregator()

    def reset(self) -> None:
        self.calls = 0  # drops the queue

    def select_action(self, batch: dict) -> torch.Tensor:
        if self.raise_at is not None and self.calls == self.raise_at:
            raise RuntimeError("policy exploded")
        if self.calls % 8 == 0:
            stats = ChunkStats(mode="speculative", num_layers=8, main_forwards=2, draft_forwards=7,
                               total_s=0.010 * (self.calls // 8 + 1))
            stats.proposed_by_depth = [0, 1, 1, 1, 1, 1, 1, 1]
            stats.accepted_by_depth = [0, 1, 1, 1, 0, 0, 0, 0]
            self.stats.add(stats)
        self.calls += 1
        return torch.tensor([0.1, 0, 0, 0, 0, 0, -1.0])

    @property
    def will_query(self) -> bool:
        return self.calls % 8 == 0


def _run(env, policy, max_steps=20, **kw):
    return run_episode(env, policy, max_steps, trial=4, seed=11, mode="speculative", image_size=16, **kw)


def test_success_when_env_reports_it():
    env = StubEnv(succeed_at=10)
    result = _run(env, StubPolicy())
    assert (result.success, result.status, result.steps, result.chunks) == (True, "success", 10, 2)
    assert env.resets == [(4, True)]  # benchmark init state `trial`, with the wait steps
    assert result.chunk_latency_ms == [10.0, 20.0]
    assert result.main_forwards == 4 and result.draft_forwards == 14
    assert result.proposed_by_depth == [0, 2, 2, 2, 2, 2, 2, 2]
    assert result.accepted_by_depth == [0, 2, 2, 2, 0, 0, 0, 0]
    assert (result.task_id, result.trial, result.seed, result.mode) == (3, 4, 11, "speculative")


def test_statistics_are_those_of_this_episode_only():
    policy = StubPolicy()
    _run(StubEnv(succeed_at=20), policy)
    result = _run(StubEnv(succeed_at=9), policy)
    assert len(policy.stats) == 3 + 2
    assert result.chunks == 2 and result.main_forwards == 4 and result.chunk_latency_ms == [10.0, 20.0]


def test_timeout_is_a_failure():
    env = StubEnv(succeed_at=None)
    result = _run(env, StubPolicy(), max_steps=20)
    assert (result.success, result.status, result.steps, result.chunks) == (False, "timeout", 20, 3)
    assert len(env.actions) == 20
    assert result.error is None


def test_policy_exception_is_an_error_not_a_success(capsys):
    env = StubEnv(succeed_at=5)
    result = _run(env, StubPolicy(raise_at=3))
    assert (result.success, result.status, result.steps) == (False, "error", 3)
    assert "RuntimeError: policy exploded" in result.error
    assert "policy exploded" in capsys.readouterr().err  # printed, never hidden
    assert result.to_json()["error"] == result.error


def test_bad_action_shape_is_an_error():
    class ShortPolicy(StubPolicy):
        def select_action(self, batch):
            return np.zeros(6)

    result = _run(StubEnv(succeed_at=1), ShortPolicy())
    assert result.status == "error" and "shape (6,)" in result.error


def test_user_input_errors_propagate():
    class BadIndexEnv(StubEnv):
        def reset(self, init_state_index, wait=True):
            raise RsdError("init state index 99 out of range: valid are 0..49")

    with pytest.raises(RsdError, match="out of range"):
        _run(BadIndexEnv(succeed_at=1), StubPolicy())


def test_frames_recorded_only_when_asked_and_not_in_json():
    result = _run(StubEnv(succeed_at=3, images=True), StubPolicy(), record_frames=True)
    assert len(result.frames) == 3 and result.frames[0].shape == (12, 24, 3)  # two cameras side by side
    assert result.frames[0].dtype == np.uint8
    assert result.frames[0][0, 0, 0] == result.frames[0][0, 12, 0] == 200  # flipped upright
    assert "frames" not in result.to_json()
    assert _run(StubEnv(succeed_at=3, images=True), StubPolicy()).frames == []


def test_to_env_action_flattens_and_checks():
    assert to_env_action(torch.ones(1, 7)).shape == (7,)
    with pytest.raises(ValueError, match="non-finite"):
        to_env_action(np.array([0, 0, 0, 0, 0, 0, np.nan]))


def test_frames_are_taken_only_in_the_step_before_a_query():
    """The env renders the step whose observation the next chunk is decoded from (as demos store it)."""
    env = StubEnv(succeed_at=None)
    _run(env, StubPolicy(), max_steps=20)
    assert [i for i, render in enumerate(env.renders) if render] == [7, 15]
    env = StubEnv(succeed_at=None, images=True)
    _run(env, StubPolicy(), max_steps=10, record_frames=True)
    assert all(env.renders)  # a video needs every frame


def test_videos_of_a_cameras_off_episode_never_compare_sizes_with_none():
    """A cameras-off env has camera_size None: recording an episode must not turn into an error episode."""
    from rsd_pl.eval.runner import frame_of, renders_video_anew

    env = StubEnv(succeed_at=3)
    env.camera_size = None
    assert not renders_video_anew(env, 128) and frame_of(env, {}, 128) is None
    result = _run(env, StubPolicy(), record_frames=True, video_size=128)
    assert result.status == "success" and result.frames == []
