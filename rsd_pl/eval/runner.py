"""One LIBERO episode with a policy, following the evaluation protocol of DESIGN.md section 6.

reset to the benchmark init state `trial` -> 10 wait steps of [0, 0, 0, 0, 0, 0, -1] (done by
`LiberoEnv.reset(wait=True)`) -> up to `max_steps` policy steps. The policy serves each decoded
chunk of T actions open loop from its queue and re-queries the engine when the queue is empty.

- success only when the environment reports it (`env.success()` after a step);
- running out of steps is a failure (`status="timeout"`);
- an exception raised by the policy or the simulator is caught here, at the episode boundary, only
  to be recorded as `status="error"` with its traceback (printed too); it is never a success.
  `RsdError` (bad user input, e.g. an init state index out of range) is not an episode outcome and
  propagates.

Imports: eval.report (percentiles) only; the env and the policy come in as arguments.
"""

from __future__ import annotations

import os
import random
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rsd_pl.errors import RsdError
from rsd_pl.eval.report import percentile

STATUSES = ("success", "timeout", "error")


class EpisodeEnv(Protocol):
    """What the runner needs from `rsd_pl.envs.LiberoEnv` (docs/envs_api.md)."""

    suite: str
    task_id: int
    task_name: str
    instruction: str
    camera_keys: tuple[str, ...]

    def reset(self, init_state_index: int, wait: bool = True) -> dict: ...
    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, float, bool, dict]: ...
    def success(self) -> bool: ...
    def batch(self, obs: dict, image_size: int, image_pipeline: str = "resize") -> dict: ...
    def record(self, obs: dict) -> dict[str, np.ndarray]: ...


class ChunkLog(Protocol):
    chunks: list[Any]
    """`rsd_pl.decoding.stats.ChunkStats` of every chunk decoded so far, in order."""


class EpisodePolicy(Protocol):
    """What the runner needs from `rsd_pl.eval.policy.RSDPolicy`: an action queue over the engine."""

    stats: ChunkLog

    def reset(self) -> None: ...
    def select_action(self, batch: dict) -> np.ndarray | torch.Tensor: ...


@dataclass
class EpisodeResult:
    """One finished episode; `to_json()` is one line of `episodes.jsonl`."""

    suite: str
    task_id: int
    task_name: str
    instruction: str
    trial: int
    """Index of the benchmark init state."""
    seed: int
    mode: str
    success: bool
    status: str
    """success | timeout | error"""
    steps: int = 0
    """Policy steps executed after the wait steps."""
    chunks: int = 0
    """Action chunks decoded by the engine."""
    chunk_latency_ms: list[float] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    """mean / p50 / p95 / max of this episode's chunk latencies."""
    main_forwards: int = 0
    draft_forwards: int = 0
    proposed_by_depth: list[int] = field(default_factory=list)
    """Draft layers proposed, indexed by residual layer - 1 (layer 1 is never proposed)."""
    accepted_by_depth: list[int] = field(default_factory=list)
    deviation_mean: float | None = None
    """Mean over chunks of the max abs gap (normalised actions) from the reference mode's decode of the same
    observation (EvalConfig.deviation_reference); None when not measured."""
    deviation_max: float | None = None
    wall_s: float = 0.0
    error: str | None = None
    """Traceback when status == error."""
    video: str | None = None
    decoding: dict[str, Any] = field(default_factory=dict)
    """The engine settings this episode ran with (acceptance rule, tau, draft_len, temperature...)."""
    run: str | None = None
    """The eval process that ran it (start time, pid, random suffix; set by the loop): speed ratios pair only
    episodes of one run (rsd_pl.eval.stats.speedups)."""
    models: dict[str, str] | None = None
    """The models that decoded it (`eval.config.models_used`: "main@1 sha256:<16 hex>", ...): a rerun
    that loads other ones is refused (`eval.episodes.check_same_models`)."""
    path: dict[str, Any] | None = None
    """With EvalConfig.record_paths: per policy step, the end-effector xyz before the step (`eef`), the gripper
    command (`gripper`, -1 open / +1 close) and the xyz of the object the goal picks (`object`, named in
    `object_name`); for trajectory plots and the multimodality experiment's mode classification."""
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    """uint8 [S, V*S, 3] frames when recording was asked; never written to the JSONL."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["frames"]
        return out


def new_run_id() -> str:
    """The `EpisodeResult.run` of this process's episodes: start time, pid and a random suffix."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def seed_everything(seed: int) -> None:
    """The episode's randomness (engine sampling, any numpy use) depends on its seed only."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_env_action(action: np.ndarray | torch.Tensor) -> np.ndarray:
    """The policy's action -> float64 (7,) for robosuite; anything else is an error."""
    if isinstance(action, torch.Tensor):
        action = action.detach().to("cpu", torch.float64).numpy()
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (7,) or not np.all(np.isfinite(action)):
        raise ValueError(f"policy returned an action of shape {action.shape} or non-finite values: {action}")
    return action


def video_larger_than_cameras(video_size: int | None, camera_size: int | None) -> bool:
    """Whether video frames are rendered anew at `video_size` (larger than the cameras the policy observes):
    then the steps need not render the observation's cameras for the video, only before a query."""
    return video_size is not None and camera_size is not None and video_size > camera_size


def renders_video_anew(env: EpisodeEnv, size: int | None) -> bool:
    """`video_larger_than_cameras` for this env (False without cameras or a `frame` method)."""
    return (bool(env.camera_keys) and hasattr(env, "frame")
            and video_larger_than_cameras(size, getattr(env, "camera_size", None)))


def frame_of(env: EpisodeEnv, obs: dict, size: int | None = None) -> np.ndarray | None:
    """The cameras upright, side by side: uint8 [S, V*S, 3]; None without cameras. With `size` larger than
    the observation's, rendered anew at that size (videos people can read), else the observation's frames."""
    if not env.camera_keys:
        return None
    if renders_video_anew(env, size):
        raw = [env.frame(obs, camera, size) for camera in env.cameras]
    else:
        record = env.record(obs)  # raw frames (S, S, 3), upside down as LIBERO renders them
        raw = [record[key] for key in env.camera_keys]
    return np.concatenate([np.ascontiguousarray(frame[::-1, ::-1]) for frame in raw], axis=1)


def _rollout(env: EpisodeEnv, policy: EpisodePolicy, result: EpisodeResult, max_steps: int,
             image_size: int, image_pipeline: str, record_frames: bool, video_size: int | None = None,
             record_path: bool = False) -> None:
    """Steps the episode, updating result.steps / status / frames (/ path) as it goes."""
    policy.reset()  # empty action queue (statistics accumulate; this episode's are sliced after)
    obs = env.reset(result.trial, wait=True)  # benchmark init state + WAIT_STEPS no-op steps
    if record_path:
        picked = env.goal[0][1]  # the object of the goal's first predicate (on / in X Y)
        result.path = {"object_name": picked, "eef": [], "gripper": [], "object": []}
    for _ in range(max_steps):
        if record_frames and (frame := frame_of(env, obs, video_size)) is not None:
            result.frames.append(frame)
        # the batch (and its camera frames) is built only when the policy queries its engine; the env
        # takes camera frames only in the step before a query (or every step for a video), as the step's
        # own observation, i.e. exactly as the demonstrations stored them
        action = policy.select_action(lambda obs=obs: env.batch(obs, image_size, image_pipeline))
        # one camera render per step: the step renders the observation's cameras only before a query, or for a
        # video made of the observation's frames (a larger video renders its own frame above)
        render = (record_frames and not renders_video_anew(env, video_size)) or getattr(policy, "will_query", True)
        action = to_env_action(action)
        if result.path is not None:
            result.path["eef"].append(np.round(obs["robot0_eef_pos"], 5).tolist())
            result.path["gripper"].append(float(action[6]))
            result.path["object"].append(np.round(env.entity_pos(result.path["object_name"]), 5).tolist())
        obs, _, _, _ = env.step(action, render=render)
        result.steps += 1
        if env.success():
            result.success, result.status = True, "success"
            return
    result.status = "timeout"


def add_chunk_stats(result: EpisodeResult, chunk_stats: list[Any], shares: list[float] | None = None,
                    rows: list[int] | None = None) -> None:
    """Engine statistics (`rsd_pl.decoding.stats.ChunkStats`) of the episode's chunks. A chunk decoded in a
    batch of B episodes (rsd_pl.eval.vector) counts its proposals with share 1/B here, so sums over the
    episodes are the engine's totals; latency and forwards per chunk are the batch's (what each env waited)."""
    shares = shares or [1.0] * len(chunk_stats)
    rows = rows or [0] * len(chunk_stats)  # this episode's row in each chunk's batch
    gaps = [c.deviation[row] for c, row in zip(chunk_stats, rows, strict=True) if getattr(c, "deviation", None)]
    if gaps:
        result.deviation_mean, result.deviation_max = round(float(np.mean(gaps)), 6), round(float(max(gaps)), 6)
    result.chunks = len(chunk_stats)
    result.chunk_latency_ms = [round(c.total_s * 1000.0, 4) for c in chunk_stats]
    latencies = result.chunk_latency_ms
    result.latency_ms = {"mean": sum(latencies) / len(latencies) if latencies else float("nan"),
                         "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                         "max": max(latencies, default=float("nan"))}
    result.main_forwards = sum(c.main_forwards for c in chunk_stats)
    result.draft_forwards = sum(c.draft_forwards for c in chunk_stats)
    if chunk_stats:
        for name in ("proposed_by_depth", "accepted_by_depth"):
            total = np.sum([np.asarray(getattr(c, name), dtype=float) * share
                            for c, share in zip(chunk_stats, shares, strict=True)], axis=0)
            setattr(result, name, [int(v) if float(v).is_integer() else round(float(v), 4) for v in total])


def run_episode(env: EpisodeEnv, policy: EpisodePolicy, max_steps: int, *, trial: int, seed: int,
                mode: str, image_size: int, image_pipeline: str = "resize",
                record_frames: bool = False, video_size: int | None = None,
                record_path: bool = False) -> EpisodeResult:
    """Run one episode (protocol in the module docstring) and return its result.

    max_steps: policy steps after the wait (the suite's `SuiteSpec.max_steps` for the benchmark).
    image_size, image_pipeline: side S of the images fed to the policy and how frames become them
    (`rsd_pl.data.obs.preprocess_images`: what the main model was trained with).
    """
    result = EpisodeResult(suite=env.suite, task_id=env.task_id, task_name=env.task_name,
                           instruction=env.instruction, trial=trial, seed=seed, mode=mode,
                           success=False, status="error")
    seed_everything(seed)
    first_chunk = len(policy.stats.chunks)  # the policy keeps statistics across episodes
    start = time.perf_counter()
    try:
        _rollout(env, policy, result, max_steps, image_size, image_pipeline, record_frames, video_size, record_path)
    except RsdError:
        raise
    except Exception:  # recorded as this episode's error, printed, counted separately; never a success
        result.success, result.status = False, "error"
        result.error = traceback.format_exc()
        print(f"episode {env.suite} task {env.task_id} trial {trial} mode {mode} failed:\n{result.error}",
              file=sys.stderr)
    result.wall_s = round(time.perf_counter() - start, 3)
    add_chunk_stats(result, policy.stats.chunks[first_chunk:])
    return result
