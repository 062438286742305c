"""N LIBERO environments in worker processes, stepped together; their observations decoded as one batch.

Hand-written over `multiprocessing` pipes (the pattern of gymnasium's AsyncVectorEnv) because the
evaluation needs what a vector env does not offer: every sub-env switches task between episodes, a
finished env leaves the batch while the others go on (AsyncVectorEnv steps all sub-envs on every
call), and each step says whether its camera frames are needed (`LiberoEnv.step(render=...)`). One env
per process also keeps rendering exact: two render contexts in one process render differently.

`run_batched(pool, policy, items, ...)` runs one episode per worker in one decoding mode through the
policy's batched interface (`RSDPolicy.reset(num_envs)` / `needs_chunk` / `queue_chunks` / `next_action`,
the same action queues `select_action` serves one env from): all envs reset to their init states;
whenever some queues are empty, their observations are decoded as one batch (B = those envs); all
unfinished envs then step in parallel. A batch's statistics are shared by its episodes: each episode records the
batch latency and a 1/B share of the batch's proposal counts, so totals over episodes are exact.

Imports: eval.runner (results, seeding), rsd_pl.envs in the workers; the policy comes in as an argument.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from rsd_pl.errors import RsdError


@dataclass(frozen=True)
class EnvSpec:
    camera_size: int | None
    cameras: tuple[str, ...]
    shadows: bool
    image_size: int
    image_pipeline: str
    video_size: int | None = None


def _worker(conn, spec: EnvSpec) -> None:
    """One LiberoEnv per process, built per task; commands: task, reset, batch, step, frame, close."""
    # The main process owns stopping. A signal sent to the whole process group (Ctrl-C in a terminal, `timeout`, a
    # scheduler's preemption) reaches the workers too; ignored here, the episodes in flight finish, the main process
    # stops between episodes (eval.loop) and closes the pool ("close", or SIGKILL after a grace period).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from rsd_pl.envs import LiberoEnv
    from rsd_pl.eval.runner import frame_of, seed_everything

    torch.set_num_threads(1)  # the workers only step and render; the engine runs in the main process
    env, key, obs = None, None, None
    while True:
        try:
            command, args = conn.recv()
        except EOFError:  # the main process is gone (killed): nothing left to do
            return
        if command == "close":
            if env is not None:
                env.close()
            conn.close()
            return
        try:
            if command == "task":
                if key != args:
                    if env is not None:
                        env.close()
                    env, key = None, None
                    env = LiberoEnv(*args, camera_size=spec.camera_size, cameras=spec.cameras, seed=0,
                                    shadows=spec.shadows, render_every_step=False)
                    key = args
                reply = (env.task_name, env.instruction)
            elif command == "reset":
                trial, seed = args
                seed_everything(seed)  # LIBERO places the fixtures (cabinet, stove) with np.random at reset
                obs = env.reset(trial, wait=True)
                reply = None
            elif command == "batch":
                reply = env.batch(obs, spec.image_size, spec.image_pipeline)
            elif command == "step":
                action, render = args
                obs, _, _, _ = env.step(action, render=render)
                reply = env.success()
            elif command == "frame":
                reply = frame_of(env, obs, spec.video_size)
            else:
                raise ValueError(f"unknown worker command {command!r}")
            conn.send(("ok", reply))
        except Exception:  # reported to the main process as this episode's error; the env is rebuilt
            conn.send(("error", traceback.format_exc()))
            if env is not None:
                env.close()
            env, key = None, None


class EnvPool:
    """`num_envs` worker processes (spawned: no forked render contexts or torch threads). The workers ignore SIGINT
    and SIGTERM (see `_worker`), so the pool closes itself at exit, before multiprocessing's own exit handler, which
    would otherwise wait forever on workers that ignore its SIGTERM."""

    def __init__(self, num_envs: int, spec: EnvSpec) -> None:
        if num_envs < 1:
            raise RsdError(f"num_envs={num_envs}: must be >= 1")
        context = mp.get_context("spawn")
        self.pipes, self.processes = [], []
        for _ in range(num_envs):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, spec), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        atexit.register(self.close)  # after multiprocessing registered its handler at the first start: runs first

    def __len__(self) -> int:
        return len(self.pipes)

    def call(self, indices: list[int], command: str, args: list[Any] | None = None) -> dict[int, tuple[str, Any]]:
        """Send `command` to the workers `indices` (args per worker), then gather ("ok"|"error", reply) each."""
        for n, i in enumerate(indices):
            self.pipes[i].send((command, None if args is None else args[n]))
        return {i: self.pipes[i].recv() for i in indices}

    def close(self) -> None:
        """Ask each worker to close its env and exit; SIGKILL one still running 10 s later. Idempotent."""
        atexit.unregister(self.close)
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                pipe.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.kill()  # not terminate(): the workers ignore SIGTERM
                process.join(timeout=10)
        self.pipes, self.processes = [], []


def stack_batches(batches: list[dict]) -> dict:
    """B single-observation model batches -> one batch (tensors concatenated on dim 0, lists joined)."""
    out = {}
    for key, value in batches[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([b[key] for b in batches], dim=0)
        else:
            out[key] = [x for b in batches for x in b[key]]
    return out


@dataclass
class _Episode:
    item: dict
    result: Any
    chunks: list
    start: float
    record: bool
    done: bool = False


def run_batched(pool: EnvPool, policy: Any, items: list[dict], mode: str, video_from_obs: bool = True) -> list[Any]:
    """One episode per item (item: suite, task_id, trial, seed, max_steps, record) in `mode`, item i on
    worker i, decoded in batches by `policy` (an RSDPolicy). `video_from_obs`: recorded frames are the
    observation's (the step renders them), else rendered larger by the worker's `frame` command alone.
    -> EpisodeResult per item (rsd_pl.eval.runner)."""
    from rsd_pl.eval.runner import EpisodeResult, seed_everything, to_env_action

    workers = list(range(len(items)))
    policy.reset(num_envs=len(items))
    seed_everything(items[0]["seed"])  # one generator for the batch: sampling modes are seeded per group
    names = pool.call(workers, "task", [(it["suite"], it["task_id"]) for it in items])
    episodes = []
    for i, item in enumerate(items):
        status, reply = names[i]
        task_name, instruction = reply if status == "ok" else ("?", "?")
        result = EpisodeResult(suite=item["suite"], task_id=item["task_id"], task_name=task_name,
                               instruction=instruction, trial=item["trial"], seed=item["seed"], mode=mode,
                               success=False, status="error", error=None if status == "ok" else reply)
        episodes.append(_Episode(item, result, [], time.perf_counter(), item["record"], done=status != "ok"))
    ready = [i for i in workers if not episodes[i].done]
    _check(pool.call(ready, "reset", [(episodes[i].item["trial"], episodes[i].item["seed"]) for i in ready]), episodes)
    while active := [i for i in workers if not episodes[i].done]:
        _decode(pool, policy, episodes, [i for i in active if policy.needs_chunk(i)])
        active = [i for i in active if not episodes[i].done]
        if recording := [i for i in active if episodes[i].record]:  # all workers render at once
            _check(pool.call(recording, "frame"), episodes, frame=True)
        actions = [policy.next_action(i) for i in active]
        # cameras render in a step only when the next observation is queried, or is a video frame
        renders = [(episodes[i].record and video_from_obs) or policy.needs_chunk(i) for i in active]
        replies = pool.call(active, "step", [(to_env_action(a), r) for a, r in zip(actions, renders, strict=True)])
        for i in active:
            episode, (status, reply) = episodes[i], replies[i]
            episode.result.steps += 1
            if status != "ok":
                _fail(episode, reply)
            elif reply:
                episode.result.success, episode.result.status, episode.done = True, "success", True
            elif episode.result.steps >= episode.item["max_steps"]:
                episode.result.status, episode.done = "timeout", True
    return [_finish(episode) for episode in episodes]


def _decode(pool: EnvPool, policy: Any, episodes: list[_Episode], need: list[int]) -> None:
    """Decode the observations of the envs in `need` as one batch; the policy queues each env's chunk."""
    if not need:
        return
    replies = pool.call(need, "batch")
    _check(replies, episodes)
    need = [i for i in need if not episodes[i].done]
    if not need:
        return
    stats = policy.queue_chunks(need, stack_batches([replies[i][1] for i in need]))
    for row, i in enumerate(need):
        episodes[i].chunks.append((stats, len(need), row))


def _check(replies: dict[int, tuple[str, Any]], episodes: list[_Episode], frame: bool = False) -> None:
    for i, (status, reply) in replies.items():
        if status != "ok":
            _fail(episodes[i], reply)
        elif frame and reply is not None:
            episodes[i].result.frames.append(reply)


def _fail(episode: _Episode, error: str) -> None:
    episode.result.success, episode.result.status, episode.result.error = False, "error", error
    episode.done = True
    print(f"episode {episode.item['suite']} task {episode.item['task_id']} trial {episode.item['trial']} "
          f"mode {episode.result.mode} failed:\n{error}")


def _finish(episode: _Episode) -> Any:
    from rsd_pl.eval.runner import add_chunk_stats

    episode.result.wall_s = round(time.perf_counter() - episode.start, 3)
    add_chunk_stats(episode.result, [stats for stats, _, _ in episode.chunks],
                    shares=[1.0 / size for _, size, _ in episode.chunks], rows=[row for _, _, row in episode.chunks])
    return episode.result
